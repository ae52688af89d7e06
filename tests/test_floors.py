"""The sequential bound of the floor (bench/floors.py, bench/step_cost.py)."""
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))   # appended: the installed fastcells keeps precedence

from bench import floors, step_cost  # noqa: E402
from bench.cases import CellCase, ClipCase, LayerCase  # noqa: E402


def test_dependent_steps():
    stack = LayerCase("lstm", "s", T=7, B=2, I=3, H=5, layers=3, bidirectional=True)
    assert floors.dependent_steps(stack, "fwd") == 21
    assert floors.dependent_steps(stack, "bwd") == 21
    assert floors.dependent_steps(stack, "fwd+bwd") == 42
    assert floors.dependent_steps(CellCase("gru_cell", "c", B=3, I=5, H=7), "fwd+bwd") == 2
    assert floors.dependent_steps(ClipCase("c", ((3, 3),)), "clip") == 0


def test_sequential_bound_joins_the_floor():
    rates = {torch.float32: 1e12}
    hw = floors.Hardware(1e9, rates, 1, 1, dict(loop_s=2e-6, launch_s=5e-6, steps=10))
    # 1000 steps x 2 us = 2 ms beats 1e6 bytes / 1 GB/s = 1 ms and 1e9 FLOP / 1 TFLOP/s = 1 ms
    assert hw.sequential_ms(1000) == pytest.approx(2.0)
    assert hw.floor_ms(1e9, 1e6, torch.float32, steps=1000) == pytest.approx(2.0)
    assert hw.floor_ms(1e9, 1e6, torch.float32, steps=10) == pytest.approx(1.0)
    assert hw.as_dict(str)["step_us"] == pytest.approx(2.0)
    unmeasured = floors.Hardware(1e9, rates, 1, 1)
    assert unmeasured.sequential_ms(1000) is None
    assert unmeasured.floor_ms(1e9, 1e6, torch.float32, steps=1000) == pytest.approx(1.0)
    d = unmeasured.as_dict(str)
    assert d["step_us"] is None and "not measured" in d["step_note"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU behaviour")
def test_step_cost_not_measured_on_cpu():
    assert step_cost.measure(torch.device("cpu")) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_step_cost_on_gpu():
    m = step_cost.measure(torch.device("cuda"), steps=200, rep_ms=20)
    assert 0 < m["loop_s"] < 1e-4 and 0 < m["launch_s"] < 1e-4
