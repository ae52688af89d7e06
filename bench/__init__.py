"""fastcells benchmark suite: the CLI (``python bench/run.py``), pytest-benchmark tests
(``pytest bench/``) and the one-script GPU check (``bench/gpu_check.sh OUTDIR``).

Modules, each named for what it holds:

``cases``      the shapes (layers, cells, clip parameter sets) and the quick / full / smoke plans
``workloads``  what each implementation runs for a case: fastcells and every baseline
``floors``     the FLOP and byte models, and the measured copy bandwidth and matmul rate
``timing``     device time, host time, peak memory
``env``        device name, versions, git commit, date
``run``        the runner and its CLI; writes the JSON rows
``report``     the markdown table, the PNG plots and the printed summary, from the rows
``tile_sweep`` a separate script: step-kernel tiles and CUDA graphs on/off at one shape (GPU)
"""
