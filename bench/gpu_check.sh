#!/usr/bin/env bash
# The one script to run on a GPU machine (see bench/README.md): an offline editable install,
# nvidia-smi and the versions, the test suite on CUDA without the interpreter, then the quick
# benchmark.  Everything goes under OUTDIR (gpu_check.log, install.log, nvidia-smi.txt,
# versions.txt, tests.log, tests.xml, bench.log, the JSON rows, the markdown table, the PNG
# plots); a short summary is printed last.
#
#   bash bench/gpu_check.sh OUTDIR [SELECTION...]
#   FASTCELLS_COMMIT=$(git rev-parse HEAD) ...   names the code measured (wins over any .git there)
#
# SELECTION: bench/run.py's --ops/--dtypes/--impls for the quick benchmark (default: the whole
# quick plan).  FASTCELLS_CHECK_LAYERS_S (seconds, default 0: none) adds the layers plan after it,
# with FASTCELLS_CHECK_LAYERS_ARGS its selection (e.g. "--ops lstm --cases fastrnns").
# FASTCELLS_CHECK_PROFILE ("cells" or "layers", default none): bench/profile_step.py after the
# host stage, where a call's host and device time go (torch.profiler over every thread, so the
# backward's autograd thread too; a cProfile of the cell's host path).
# FASTCELLS_CHECK_SWEEPS (comma list, default none): the GPU-only sweeps to
# run before the benchmark, "directions" (bidirectional layers with both directions in one
# launch against one after the other, bench/directions_sweep.py), "tile" (step-kernel tiles,
# bench/tile_sweep.py) and "persistent" (the persistent layer kernel against the step chain
# against cuDNN, bench/persistent_sweep.py: OUTDIR/persistent_sweep.json, the dispatch table
# OUTDIR/persistent_table.json written from its rows, the issue's targets in its log; its share
# FASTCELLS_CHECK_PERSISTENT_S, default 180 s, the sweep's own budget 30 s less); "" for none.
# On CPU "persistent" runs the sweep's --dry-run (the interpreter, tiny shapes: the plumbing).
# FASTCELLS_CHECK_RECURRENCE (auto, step or persistent; default: not set): the test stage runs
# with FASTCELLS_RECURRENCE set to it, e.g. "persistent" runs the CUDA suite with the persistent
# path forced wherever it is eligible.  Wherever the persistent path is forced or swept, a smoke
# call (bench/persistent_sweep.py --smoke, one forced fwd+bwd) first runs under a 90 s timeout
# of its own: if it hangs (a grid barrier that never opens), the forced tests run unforced and
# the sweep is skipped, so a hang costs 90 s, not the budget.
# FASTCELLS_CHECK_BENCH_S=0 skips the quick benchmark and its report, FASTCELLS_CHECK_HOST_S=0
# the host stage (runs that need only the tests and a sweep).  Everything issue 23 still needs:
#   FASTCELLS_CHECK_SWEEPS=persistent FASTCELLS_CHECK_RECURRENCE=persistent \
#   FASTCELLS_CHECK_BENCH_S=0 FASTCELLS_CHECK_HOST_S=0 bash bench/gpu_check.sh OUTDIR
#
# It is built to end inside 8 minutes on an H100: every stage runs under `timeout` with a share of a
# 450 s budget (FASTCELLS_CHECK_BUDGET_S), a failing or slow stage is recorded and the script
# goes on, and the benchmark writes its rows after every case, so a cut run keeps them.
# Without a GPU (a dry run) the test stage runs only the bench smoke test (CI runs the whole
# suite) and the benchmark runs in its CPU mode.
set -uo pipefail

if [ $# -lt 1 ]; then
  echo "usage: bash bench/gpu_check.sh OUTDIR [--ops ...] [--dtypes ...] [--impls ...]" >&2
  exit 2
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$1" && OUT="$(cd "$1" && pwd)"
shift
SELECTION=("$@")
SWEEPS=",${FASTCELLS_CHECK_SWEEPS-},"
cd "$ROOT" || exit 2
PY="${PYTHON:-$(command -v python3 || command -v python)}"
BUDGET_S="${FASTCELLS_CHECK_BUDGET_S:-450}"
TESTS_MAX_S=${FASTCELLS_CHECK_TESTS_S:-240}   # the test suite's share at most
BENCH_MIN_S=${FASTCELLS_CHECK_BENCH_S:-150}   # what the quick benchmark is left at least
REPORT_S=${FASTCELLS_CHECK_REPORT_S:-40}   # the table and plots
LAYERS_S=${FASTCELLS_CHECK_LAYERS_S:-0}    # the layers plan after the quick benchmark (0: none)
SWEEP_S=80               # each sweep's share at most (GPU only)
PERSISTENT_S=${FASTCELLS_CHECK_PERSISTENT_S:-180}   # the persistent sweep's share at most
SMOKE_S=90               # the persistent smoke call's timeout
RECURRENCE="${FASTCELLS_CHECK_RECURRENCE:-}"
case $RECURRENCE in ""|auto|step|persistent) ;; *) echo "FASTCELLS_CHECK_RECURRENCE must be auto, step or persistent" >&2; exit 2;; esac
HOST_S=${FASTCELLS_CHECK_HOST_S:-60}       # the host-overhead stage at most (GPU only)
SWEEPS_S=0               # what the chosen sweeps are kept
PROFILE="${FASTCELLS_CHECK_PROFILE:-}"
case $PROFILE in ""|cells|layers) ;; *) echo "FASTCELLS_CHECK_PROFILE must be cells or layers" >&2; exit 2;; esac
PROFILE_S=0              # the profile stage's share (GPU only)
[ -n "$PROFILE" ] && PROFILE_S=${FASTCELLS_CHECK_PROFILE_S:-60}
case $SWEEPS in *,tile,*) SWEEPS_S=$(( SWEEPS_S + SWEEP_S ));; esac
case $SWEEPS in *,directions,*) SWEEPS_S=$(( SWEEPS_S + SWEEP_S ));; esac
case $SWEEPS in *,persistent,*) SWEEPS_S=$(( SWEEPS_S + PERSISTENT_S ));; esac
[ "$BENCH_MIN_S" -eq 0 ] && REPORT_S=0   # no benchmark: no report either
SWEEPS_S=$(( SWEEPS_S + PROFILE_S ))   # the profile stage is kept its share the same way
LOG="$OUT/gpu_check.log"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET   # real compilation on the GPU
: > "$LOG"
START=$SECONDS
STATUS=()
FAILED=0

say() { echo "$*" | tee -a "$LOG"; }
left() { echo $(( BUDGET_S - (SECONDS - START) )); }
min() { if [ "$1" -lt "$2" ]; then echo "$1"; else echo "$2"; fi; }

# stage NAME LIMIT_S FILE CMD...: run CMD under `timeout`, its output in FILE (and the log),
# and record how it went.  Returns CMD's exit status.
stage() {
  local name=$1 limit=$2 file=$3
  shift 3
  if [ "$limit" -lt 10 ]; then
    say "== $name: skipped, no time left"
    STATUS+=("$(printf '%-9s %s' "$name" "skipped: no time left")")
    FAILED=1
    return 99
  fi
  say "== $name (limit ${limit}s): $*"
  local t0=$SECONDS rc what
  timeout -k 10 "$limit" "$@" > "$file" 2>&1
  rc=$?
  cat "$file" >> "$LOG"
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    what="TIMED OUT at ${limit}s"
  elif [ $rc -ne 0 ]; then
    what="failed (exit $rc)"
  else
    what="ok"
  fi
  [ $rc -eq 0 ] || FAILED=1
  STATUS+=("$(printf '%-9s %-22s %4ss  %s' "$name" "$what" "$(( SECONDS - t0 ))" "${file#"$OUT"/}")")
  say "== $name: $what in $(( SECONDS - t0 ))s"
  return $rc
}

say "fastcells gpu_check: $(date -u +%Y-%m-%dT%H:%M:%SZ) in $ROOT -> $OUT (budget ${BUDGET_S}s)"

# 1. Offline editable install (no network there: no index, no dependencies, no isolation).
#    Where pip cannot (no setuptools or wheel in that environment), a path finder does what an
#    editable install does: fastcells and fastcells.kernels (kernels/) imported from this checkout.
from_checkout() {
  "$PY" - "$ROOT" << 'PYEOF'
import pathlib, sys
root = pathlib.Path(sys.argv[1]).resolve()
import fastcells, fastcells.kernels
for mod in (fastcells, fastcells.kernels):
    where = pathlib.Path(mod.__file__).resolve()
    print(mod.__name__, "from", where)
    if root not in where.parents:
        sys.exit(f"{mod.__name__} is not imported from {root}")
PYEOF
}
write_finder() {
  "$PY" - "$ROOT" << 'PYEOF'
import pathlib, sys, sysconfig
root = pathlib.Path(sys.argv[1]).resolve()
site = pathlib.Path(sysconfig.get_paths()["purelib"])
(site / "_fastcells_checkout_finder.py").write_text(f"""\
# Written by bench/gpu_check.sh where pip could not install fastcells: imports fastcells and
# fastcells.kernels from the checkout {root}, as an editable install would.
import importlib.util, sys
_MAP = {{'fastcells': {str(root / 'fastcells')!r}, 'fastcells.kernels': {str(root / 'kernels')!r}}}
class _CheckoutFinder:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        where = _MAP.get(name)
        if where is None:
            return None
        return importlib.util.spec_from_file_location(
            name, where + "/__init__.py", submodule_search_locations=[where])
sys.meta_path.insert(0, _CheckoutFinder)
""")
(site / "_fastcells_checkout.pth").write_text("import _fastcells_checkout_finder\n")
print("wrote", site / "_fastcells_checkout.pth")
PYEOF
}
stage install 120 "$OUT/install.log" \
  "$PY" -m pip install --no-index --no-deps --no-build-isolation -e .
if ! from_checkout >> "$OUT/install.log" 2>&1; then
  say "pip could not install fastcells from this checkout (see install.log): adding a path finder"
  write_finder >> "$OUT/install.log" 2>&1
  if from_checkout >> "$OUT/install.log" 2>&1; then
    FAILED=0      # pip's failure is the environment's; fastcells imports from the checkout
    STATUS+=("$(printf '%-9s %s' install "pip failed; fastcells imported from the checkout by a path finder")")
  fi
fi
if ! from_checkout 2>&1 | tee -a "$OUT/install.log" "$LOG"; then
  say "fastcells does not import from $ROOT: see $OUT/install.log; stopping."
  printf '  %s\n' "${STATUS[@]}"
  exit 1
fi

# 2. The machine and the versions.
HAS_CUDA=0
"$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" && HAS_CUDA=1
if command -v nvidia-smi > /dev/null; then
  stage nvidia-smi 30 "$OUT/nvidia-smi.txt" bash -c \
    "nvidia-smi && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.sm,power.limit,persistence_mode --format=csv"
else
  say "== nvidia-smi: not on this machine"
  STATUS+=("$(printf '%-9s %s' nvidia-smi "not on this machine")")
fi
stage versions 60 "$OUT/versions.txt" "$PY" - <<'PYEOF'
import importlib.metadata as md, os, platform, subprocess
import torch, triton, fastcells
print("python", platform.python_version(), platform.platform())
for pkg in ("torch", "triton", "numpy", "pytest", "pytest-benchmark", "matplotlib", "setuptools"):
    try:
        print(pkg, md.version(pkg))
    except md.PackageNotFoundError:
        print(pkg, "not installed")
print("cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
print("tf32 matmul", torch.backends.cuda.matmul.allow_tf32, "| float32 matmul precision", torch.get_float32_matmul_precision())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"{p.total_memory / 2**30:.1f} GiB", "capability", f"{p.major}.{p.minor}", "SMs", p.multi_processor_count)
else:
    print("gpu none")
print("fastcells", fastcells.__file__)
try:
    print("commit", os.environ.get("FASTCELLS_COMMIT") or subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip() or "unknown")
except Exception as e:
    print("commit unknown", type(e).__name__)
PYEOF
cat "$OUT/versions.txt"

# 2a. Where the persistent path is forced (tests) or swept: one forced fwd+bwd first, under a
#     short timeout of its own, so that a grid barrier that hangs costs seconds.
PERSISTENT_HUNG=0
if [ $HAS_CUDA -eq 1 ] && { [ "$RECURRENCE" = persistent ] || [[ $SWEEPS == *,persistent,* ]]; }; then
  stage smoke "$SMOKE_S" "$OUT/persistent_smoke.log" "$PY" bench/persistent_sweep.py --smoke
  rc=$?
  cat "$OUT/persistent_smoke.log"
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    PERSISTENT_HUNG=1
    say "the persistent smoke call did not end in ${SMOKE_S}s: the tests run unforced, the persistent sweep is skipped"
  fi
fi
TEST_ENV=()
if [ -n "$RECURRENCE" ] && [ $PERSISTENT_HUNG -eq 0 ]; then
  TEST_ENV=(env "FASTCELLS_RECURRENCE=$RECURRENCE")
  say "tests run with FASTCELLS_RECURRENCE=$RECURRENCE"
fi

# 3. The test suite on CUDA, without the interpreter (on CPU: the bench smoke test only).
if [ $HAS_CUDA -eq 1 ]; then
  # Compiling the kernels' variants is most of the suite's time there: spread it over the
  # CPU cores with pytest-xdist where it is installed.
  XDIST=()
  "$PY" -c "import xdist" 2> /dev/null && XDIST=(-n 12)
  stage tests "$(min $TESTS_MAX_S $(( $(left) - BENCH_MIN_S - HOST_S - SWEEPS_S - REPORT_S - LAYERS_S )))" "$OUT/tests.log" \
    ${TEST_ENV[@]+"${TEST_ENV[@]}"} "$PY" -m pytest tests -q -rfE -p no:cacheprovider --durations=15 ${XDIST[@]+"${XDIST[@]}"} --junitxml="$OUT/tests.xml"
else
  say "No CUDA GPU: the full test suite is CI's job (bash .ci/run); running the bench smoke test only."
  stage tests 120 "$OUT/tests.log" \
    ${TEST_ENV[@]+"${TEST_ENV[@]}"} "$PY" -m pytest tests/test_bench_smoke.py -q -rfE -p no:cacheprovider --junitxml="$OUT/tests.xml"
fi
TESTS_LINE="$(grep -E '[0-9]+ (passed|failed|error)' "$OUT/tests.log" | tail -n 1)"
say "tests: ${TESTS_LINE:-no summary line (see tests.log)}"
grep -E '^(FAILED|ERROR) ' "$OUT/tests.log" | head -n 30 | tee -a "$LOG"

# 3a. Host enqueue time and device time per call, fastcells against torch.nn (cells, a T=16
#     layer): the calls whose cost is the host path.
if [ $HAS_CUDA -eq 1 ] && [ "$HOST_S" -eq 0 ]; then
  say "== host: skipped (FASTCELLS_CHECK_HOST_S=0)"
  STATUS+=("$(printf '%-9s %s' host "skipped: FASTCELLS_CHECK_HOST_S=0")")
elif [ $HAS_CUDA -eq 1 ]; then
  stage host "$(min $HOST_S $(( $(left) - BENCH_MIN_S - SWEEPS_S - REPORT_S - LAYERS_S )))" "$OUT/host_overhead.log" \
    "$PY" bench/host_overhead.py --json "$OUT/host_overhead.json"
  tail -n 7 "$OUT/host_overhead.log"
fi
if [ $HAS_CUDA -eq 1 ] && [ -n "$PROFILE" ]; then
  PROFILE_ARGS=()
  [ "$PROFILE" = cells ] && PROFILE_ARGS=(--cells)
  stage profile "$(min $PROFILE_S $(( $(left) - BENCH_MIN_S - SWEEPS_S + PROFILE_S - REPORT_S - LAYERS_S )))" \
    "$OUT/profile_$PROFILE.log" "$PY" bench/profile_step.py ${PROFILE_ARGS[@]+"${PROFILE_ARGS[@]}"} --out "$OUT/profile_$PROFILE.txt"
  tail -n 14 "$OUT/profile_$PROFILE.log"
fi

# 3b. The sweeps (GPU only): both directions in one launch against one after the other; the
#     step kernels' tiles and CUDA graphs on/off at the fastrnns shape.
if [ $HAS_CUDA -eq 1 ] && [[ $SWEEPS == *,directions,* ]]; then
  LIMIT=$(min $SWEEP_S $(( $(left) - BENCH_MIN_S - REPORT_S - LAYERS_S )))
  stage directions "$LIMIT" "$OUT/directions_sweep.log" \
    "$PY" bench/directions_sweep.py --out "$OUT/directions_sweep.json" --budget-s $(( LIMIT > 40 ? LIMIT - 25 : 15 ))
  tail -n 14 "$OUT/directions_sweep.log"
fi
if [ $HAS_CUDA -eq 1 ] && [[ $SWEEPS == *,tile,* ]]; then
  stage sweep "$(min $SWEEP_S $(( $(left) - BENCH_MIN_S - REPORT_S - LAYERS_S )))" "$OUT/tile_sweep.log" \
    "$PY" bench/tile_sweep.py --out "$OUT/tile_sweep.json"
  tail -n 22 "$OUT/tile_sweep.log"
fi

# 3c. The persistent layer kernel against the step chain and cuDNN; the dispatch table from its
#     rows (on CPU: the sweep's dry run, the interpreter at tiny shapes).
if [[ $SWEEPS == *,persistent,* ]]; then
  if [ $PERSISTENT_HUNG -eq 1 ]; then
    say "== persistent: skipped, the smoke call hung"
    STATUS+=("$(printf '%-9s %s' persistent "skipped: the smoke call hung")")
    FAILED=1
  else
    DRY=()
    LIMIT=$(min $PERSISTENT_S $(( $(left) - BENCH_MIN_S - REPORT_S - LAYERS_S )))
    if [ $HAS_CUDA -eq 0 ]; then
      DRY=(--dry-run)
      LIMIT=$(min 120 $(( $(left) )))
    fi
    stage persistent "$LIMIT" "$OUT/persistent_sweep.log" \
      "$PY" bench/persistent_sweep.py ${DRY[@]+"${DRY[@]}"} --out "$OUT/persistent_sweep.json" \
      --table "$OUT/persistent_table.json" --budget-s $(( LIMIT > 60 ? LIMIT - 30 : LIMIT / 2 ))
    tail -n 18 "$OUT/persistent_sweep.log"
  fi
fi

# 4. The quick benchmark: rows written after every case; a soft budget stops it starting new
#    cases in time, and `timeout` is the hard stop.  FASTCELLS_CHECK_BENCH_S=0: none.
JSON=""
if [ "$BENCH_MIN_S" -eq 0 ]; then
  say "== bench: skipped (FASTCELLS_CHECK_BENCH_S=0)"
  STATUS+=("$(printf '%-9s %s' bench "skipped: FASTCELLS_CHECK_BENCH_S=0")")
else
  BENCH_S=$(( $(left) - REPORT_S - LAYERS_S ))
  stage bench "$BENCH_S" "$OUT/bench.log" \
    "$PY" bench/run.py --quick ${SELECTION[@]+"${SELECTION[@]}"} --out "$OUT" --no-report --budget-s $(( BENCH_S - 60 > 30 ? BENCH_S - 60 : 30 ))
  [ -f "$OUT/bench.log" ] && tail -n 3 "$OUT/bench.log"
  JSON="$(ls -t "$OUT"/*_quick*.json 2> /dev/null | head -n 1)"
fi

# 4b. The layers plan (bench/run.py --layers: fastcells against native over the layer cases,
#     most important first), where FASTCELLS_CHECK_LAYERS_S gives it time.
if [ "$LAYERS_S" -gt 0 ]; then
  LIMIT=$(min $LAYERS_S $(( $(left) - REPORT_S )))
  stage layers "$LIMIT" "$OUT/layers.log" \
    "$PY" bench/run.py --layers ${FASTCELLS_CHECK_LAYERS_ARGS:-} --out "$OUT" --no-report --budget-s $(( LIMIT > 60 ? LIMIT - 30 : 30 ))
fi
LAYERS_JSON="$(ls -t "$OUT"/*_layers*.json 2> /dev/null | head -n 1)"

# 5. The markdown table and the plots, drawn from the rows.
if [ "$BENCH_MIN_S" -eq 0 ]; then
  :   # no benchmark, no report
elif [ -n "$JSON" ]; then
  stage report "$(min $REPORT_S $(( $(left) + 20 )))" "$OUT/report.log" "$PY" bench/report.py "$JSON"
else
  say "== report: no JSON rows were written (see bench.log)"
  STATUS+=("$(printf '%-9s %s' report "no JSON rows")")
  FAILED=1
fi

# 6. The summary, last.
echo
echo "== gpu_check: $(( SECONDS - START ))s in all; files in $OUT"
printf '  %s\n' "${STATUS[@]}"
TEST_NOTE=""
[ ${#TEST_ENV[@]} -gt 0 ] && TEST_NOTE=" (${TEST_ENV[1]})"
echo "  tests: ${TESTS_LINE:-no summary line}$TEST_NOTE"
if [ -f "$OUT/persistent_sweep.log" ]; then
  echo
  sed -n '/^dispatch table:/,$p' "$OUT/persistent_sweep.log"
fi
for rows in "$JSON" "$LAYERS_JSON"; do
  if [ -n "$rows" ]; then
    echo
    "$PY" bench/report.py --summary --no-write "$rows" 2>&1 | tee -a "$LOG"
  fi
done
exit $FAILED
