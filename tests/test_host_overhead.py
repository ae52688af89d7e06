"""fastcells' host path per call against torch.nn's whole CPU call (bench/host_overhead.py):
Triton launches stubbed under the interpreter, tiny sizes, the median ratio of short
alternating batches.

The goal is 1.0x (at most torch.nn's call); measured on an idle 2-core machine the path is at
0.9x-1.2x (README).  The assertion leaves room for scheduling noise on a shared CI machine (the
other test worker runs beside it) and still catches a return of the old host path (custom-op
dispatch and graph copies per call: 2.0x-4.8x)."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BOUND = 2.5


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU measurement (launches stubbed)")
def test_host_path_no_heavier_than_torch_nn(monkeypatch):
    from bench import host_overhead
    monkeypatch.setattr(torch, "empty", host_overhead.torch_empty)  # undo the NaN poison
    rows = host_overhead.measure("cpu", number=10, repeats=31)
    print("\n" + host_overhead.render(rows))
    assert [r["case"] for r in rows] == list(host_overhead.CASES)
    for r in rows:
        assert r["ratio"] <= BOUND, (r["case"], r["ratio"])
