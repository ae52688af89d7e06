"""Test setup: the Triton interpreter on machines without CUDA, the test device, NaN poison."""
import math
import os

import pytest
import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    # Must be set before triton.jit decorates the kernels (fastcells.kernels import time).
    os.environ["TRITON_INTERPRET"] = "1"
if os.environ.get("TRITON_INTERPRET") == "1":
    from interpreter_patching import install
    install()

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def device():
    return DEVICE


_empty, _empty_like = torch.empty, torch.empty_like


def _poison(t):
    if t.is_floating_point() and t.numel():
        t.fill_(math.nan)
    return t


@pytest.fixture(autouse=True)
def nan_poison(monkeypatch):
    """Every torch.empty/empty_like result starts as NaN, so an unwritten element fails."""
    monkeypatch.setattr(torch, "empty", lambda *a, **k: _poison(_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: _poison(_empty_like(*a, **k)))
    yield
