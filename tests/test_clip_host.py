"""The clip's host path: a cached call costs well under a microsecond or two per tensor, and the
cache is never stale (a gradient replaced, resized, restrided, retyped or set to None between
calls gives torch's result)."""
import time

import pytest
import torch
from tolerances import TOL

import fastcells
from fastcells.kernels import clip_launch as klaunch
from fastcells.kernels import clip_plan as kplan

f32, bf16 = torch.float32, torch.bfloat16
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning")


def twins(device, n=3):
    """Two equal parameter lists (ours, torch's) of small fp32 grads."""
    out = []
    for _ in range(2):
        gen = torch.Generator().manual_seed(0)
        ps = [torch.nn.Parameter(torch.zeros(5, device=device)) for _ in range(n)]
        for p in ps:
            p.grad = torch.randn(5, generator=gen).to(device)
        out.append(ps)
    return out


def check(ours, theirs, max_norm=0.5):
    total = fastcells.clip_grad_norm_(ours, max_norm, backend="triton")
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    torch.testing.assert_close(total, expected, **TOL[expected.dtype])
    for p, q in zip(ours, theirs):
        assert (p.grad is None) == (q.grad is None)
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, **TOL[q.grad.dtype])


def _buffer(values, device, dtype=f32):
    buf = torch.zeros(2 * values.numel() + 8, dtype=dtype, device=device)
    buf.normal_(generator=torch.Generator(device=device).manual_seed(7))   # gaps hold values too
    return buf


def _replaced(ps, device):
    ps[0].grad = ps[0].grad * 3                       # a new tensor elsewhere


def _resized_smaller(ps, device):
    ps[1].grad.resize_(3)                             # same object, same address, fewer elements


def _resized_larger(ps, device):
    ps[1].grad.resize_(40).normal_(generator=torch.Generator(device=device).manual_seed(3))


def _noncontig_same_address(ps, device):
    """The same address and numel, every other element: a stale plan reads the wrong ones."""
    g = ps[2].grad
    buf = _buffer(g, device)
    ps[2].grad = buf[:g.numel()]
    ps[2]._fc_buf = buf      # both twins get the same layout change


def _then_gappy(ps, device):
    ps[2].grad = ps[2]._fc_buf[:2 * ps[2].grad.numel():2]


def _retyped_same_address(ps, device):
    g = ps[0].grad
    raw = torch.zeros(g.numel(), dtype=f32, device=device)
    ps[0].grad = raw
    ps[0]._fc_raw = raw


def _then_bf16(ps, device):
    """A bf16 parameter whose grad lies at the f32 grad's address, with as many elements."""
    raw = ps[0]._fc_raw
    ps[0] = torch.nn.Parameter(torch.zeros(raw.numel(), dtype=bf16, device=device))
    ps[0].grad = raw.view(bf16)[:raw.numel()].copy_(torch.linspace(-2, 3, raw.numel()))


def _set_to_none(ps, device):
    ps[1].grad = None


CHANGES = {
    "replaced": [_replaced],
    "resized-smaller": [_resized_smaller],
    "resized-larger": [_resized_larger],
    "non-contiguous-same-address": [_noncontig_same_address, _then_gappy],
    "retyped-same-address": [_retyped_same_address, _then_bf16],
    "set-to-none": [_set_to_none],
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_cache_follows_gradient_changes(change, device):
    ours, theirs = twins(device)
    check(ours, theirs)
    assert kplan.cached([p.grad for p in ours]) is not None      # the next call would hit
    for step in CHANGES[change]:
        for ps in (ours, theirs):
            step(ps, device)
        check(ours, theirs, max_norm=0.25)
        check(ours, theirs, max_norm=0.125)          # and once more, on the cached plan


def test_cached_call_skips_the_builder(monkeypatch, device):
    ours, theirs = twins(device)
    check(ours, theirs)
    built = []
    plan = kplan.plan
    monkeypatch.setattr(kplan, "plan", lambda *a, **k: built.append(1) or plan(*a, **k))
    check(ours, theirs, max_norm=0.25)
    fastcells.get_total_norm([p.grad for p in ours], backend="triton")
    fastcells.clip_grads_with_norm_(ours, 1.0, torch.tensor(3.0, device=device), backend="triton")
    assert built == []


def test_cached_call_bumps_versions(device):
    """In place, as the op (and torch's mul_) would: autograd sees the change."""
    ours, theirs = twins(device)
    check(ours, theirs)
    before = [p.grad._version for p in ours]
    check(ours, theirs, max_norm=0.25)
    assert all(p.grad._version > v for p, v in zip(ours, before))


# --------------------------------------------------------------------------- the host cost
class _NoLaunch:
    """Stands in for a @triton.jit kernel: ``kernel[grid](...)`` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


N_TENSORS = 2000
HOST_US_PER_TENSOR = 2.0    # generous: the old path (rebuilt key, per-tensor checks, the op's
                            # Python version bumps) cost 5 us here, the cached one about 0.6


@pytest.mark.skipif(torch.cuda.is_available(), reason="times the CPU path with launches stubbed")
def test_cached_call_host_cost_per_tensor(monkeypatch):
    for name in dir(klaunch):
        if name.startswith("_clip_") and name.endswith("_kernel"):
            monkeypatch.setattr(klaunch, name, _NoLaunch())
    params = [torch.nn.Parameter(torch.zeros(3)) for _ in range(N_TENSORS)]
    for p in params:
        p.grad = torch.ones(3)
    fastcells.clip_grad_norm_(params, 1.0, backend="triton")      # builds the plan
    best = float("inf")
    for _ in range(30):
        # this thread's CPU time, not wall time (other processes on a loaded CI machine do not
        # count), and the minimum (interrupts and cache misses only ever add)
        t = time.thread_time()
        fastcells.clip_grad_norm_(params, 1.0, backend="triton")
        best = min(best, time.thread_time() - t)
    us = best / N_TENSORS * 1e6
    print(f"cached clip_grad_norm_: {us:.3f} us host time per tensor ({N_TENSORS} tensors)")
    assert us <= HOST_US_PER_TENSOR
