"""Shared helpers for the recurrent-module tests: twin modules and gradient collection."""
import torch
from torch import nn

from fastcells.modules import TORCH_CLASSES, TWINS

# mode -> (torch class, fastcells class, constructor keywords), from fastcells' one class map
_MODES = {"lstm": ("lstm", {}), "gru": ("gru", {}), "rnn_tanh": ("rnn", {"nonlinearity": "tanh"}),
          "rnn_relu": ("rnn", {"nonlinearity": "relu"})}
KINDS = {m: (TORCH_CLASSES[f][0], TWINS[TORCH_CLASSES[f][0]], kw) for m, (f, kw) in _MODES.items()}
CELLS = {m: (TORCH_CLASSES[f][1], TWINS[TORCH_CLASSES[f][1]], kw) for m, (f, kw) in _MODES.items()}


def twins(table, kind, *args, backend, dtype=torch.float64, device="cpu", seed=0, **kw):
    """(torch module, fastcells module) with identical weights (copied through state_dict)."""
    torch_cls, fast_cls, extra = table[kind]
    torch.manual_seed(seed)
    ref = torch_cls(*args, **extra, **kw).to(device=device, dtype=dtype)
    fast = fast_cls(*args, **extra, **kw, backend=backend).to(device=device, dtype=dtype)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def flat(out):
    """Flatten nested outputs (tensors, tuples, PackedSequence) to a list of tensors."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, nn.utils.rnn.PackedSequence):
        return [out.data]
    res = []
    for o in out:
        res += flat(o)
    return res


def loss_of(outs, seed=1):
    """A weighted sum touching every output (final states included), with fixed random weights."""
    g = torch.Generator().manual_seed(seed)
    total = 0
    for o in outs:
        w = torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.device, o.dtype)
        total = total + (o * w).sum()
    return total


def grads(loss, tensors):
    return torch.autograd.grad(loss, tensors, allow_unused=True, retain_graph=True)


def to_device(t, device):
    """A tensor, a tuple of tensors, or None, moved to ``device``."""
    if t is None:
        return None
    return tuple(v.to(device) for v in t) if isinstance(t, tuple) else t.to(device)


def assert_same_errors(ref, fast, cases, device):
    """Each (input, hx) case raises the same exception type and message in both modules."""
    import pytest
    for name, (x, hx) in cases.items():
        x, hx = to_device(x, device), to_device(hx, device)
        with pytest.raises(Exception) as e_ref:
            ref(x, hx)
        with pytest.raises(Exception) as e_fast:
            fast(x, hx)
        assert type(e_fast.value) is type(e_ref.value), name
        assert str(e_fast.value) == str(e_ref.value), name


def count_launches(monkeypatch, mode):
    """Records the grid of every forward and backward step-kernel launch of ``mode``:
    returns {"fwd": [grid, ...], "bwd": [...]}."""
    import dataclasses
    from fastcells import cells
    calls = {"fwd": [], "bwd": []}

    class Counting:
        def __init__(self, kernel, into):
            self.kernel, self.into, self.arg_names = kernel, into, kernel.arg_names

        def __getitem__(self, grid):
            launch = self.kernel[grid]

            def counted(*args, **kwargs):
                self.into.append(grid)
                return launch(*args, **kwargs)
            return counted

        def run(self, *args, grid, warmup, **kwargs):   # kernels.common.bound_launch's way in
            if not warmup:
                self.into.append(grid)
            return self.kernel.run(*args, grid=grid, warmup=warmup, **kwargs)

    cell = cells.CELLS[mode]
    spec = cell.kernels
    monkeypatch.setattr(cell, "kernels", dataclasses.replace(
        spec, fwd=Counting(spec.fwd, calls["fwd"]), bwd=Counting(spec.bwd, calls["bwd"])))
    return calls
