"""The benchmarks as pytest-benchmark tests: ``pytest bench/`` (``--benchmark-json FILE`` keeps
the numbers; ``FASTCELLS_BENCH_PLAN=full`` for every case).  One test per case, dtype,
implementation and pass, with the row's floor in ``extra_info``; each timed call ends with a
device synchronisation, so the wall time pytest-benchmark measures is the call's device time.

The CLI (``python bench/run.py``) is the tool that writes the committed results; these tests
time the same workloads (``bench/workloads.py``) through pytest-benchmark's statistics.
"""
import os

import pytest
import torch

from bench import cases, floors, timing, workloads

pytest.importorskip("pytest_benchmark")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
PLAN = os.environ.get("FASTCELLS_BENCH_PLAN", "quick")


def _params():
    for job in cases.plan(PLAN, DEVICE):
        for dtype in job.dtypes:
            for impl in job.impls:
                reason = workloads.not_applicable(job.case, impl, DEVICE)
                for pass_ in job.case.passes:
                    yield pytest.param(
                        job.case, dtype, impl, pass_,
                        id=f"{job.case.op}-{job.case.name}-{dtype}-{impl}-{pass_}",
                        marks=[pytest.mark.skip(reason=reason)] if reason else [])


@pytest.fixture(scope="session")
def hardware():
    names = dict.fromkeys(d for job in cases.plan(PLAN, DEVICE) for d in job.dtypes)
    return floors.measure(DEVICE, [cases.DTYPES[d] for d in names])


@pytest.mark.parametrize("case, dtype, impl, pass_", list(_params()))
def test_bench(benchmark, hardware, case, dtype, impl, pass_):
    dt = cases.DTYPES[dtype]
    p = workloads.build(case, impl, dt, DEVICE)[pass_]
    if p.setup is not None:
        p.setup()

    def call():
        p.fn()
        timing.synchronize(DEVICE)

    call()                      # compile and warm up outside the timing
    flops, elems = floors.model(case)[pass_]
    benchmark.extra_info.update(
        op=case.op, case=case.name, impl=impl, dtype=dtype, shape=case.shape(),
        floor_ms=hardware.floor_ms(flops, elems * torch.finfo(dt).bits // 8, dt,
                                  floors.dependent_steps(case, pass_)),
        device=str(DEVICE))
    benchmark(call)
