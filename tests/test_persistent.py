"""The persistent schedule (kernels.persistent, FASTCELLS_RECURRENCE=persistent): the whole time
loop of a layer-direction in one kernel.  Without a GPU it runs through the interpreter one step
per launch (the launch boundary standing in for the grid barrier), the same body and the same
order as one launch; here it is checked in float64 against torch.nn's modules and against the
step chain, forward and backward, for every cell, packed, bidirectional (separate and stacked
members), by gradcheck, and under torch.compile as users call it."""
import dataclasses

import pytest
import torch
import triton
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fastcells
from fastcells.kernels import persistent
from rnn_utils import KINDS, flat, grads, loss_of, twins
from test_rnn_parity import _make_input, assert_matches_torch
from tolerances import GRAD_REL_ERR, assert_close

T, B, I, H = 5, 3, 4, 7


def count_persistent(monkeypatch):
    """Records the grid of every persistent forward and backward launch."""
    calls = {"fwd": [], "bwd": []}

    class Counting:
        def __init__(self, kernel, into):
            self.kernel, self.into = kernel, into

        def __getitem__(self, grid):
            self.into.append(grid)
            return self.kernel[grid]

    monkeypatch.setattr(persistent, "_persistent_fwd_kernel",
                        Counting(persistent._persistent_fwd_kernel, calls["fwd"]))
    monkeypatch.setattr(persistent, "_persistent_bwd_kernel",
                        Counting(persistent._persistent_bwd_kernel, calls["bwd"]))
    return calls


@pytest.fixture
def forced(monkeypatch):
    monkeypatch.setenv("FASTCELLS_RECURRENCE", "persistent")
    return count_persistent(monkeypatch)


OPTIONS = {"default": {}, "nobias": dict(bias=False), "batch_first": dict(batch_first=True),
           "bidir2": dict(num_layers=2, bidirectional=True)}
CASES = [(kind, opt, inp) for kind in KINDS for opt, inp in
         (("default", "given-hx"), ("nobias", "packed"), ("bidir2", "packed-sorted"),
          ("batch_first", "noncontig"))]


@pytest.mark.parametrize("kind,opt,inp", CASES)
def test_matches_torch(kind, opt, inp, forced, device):
    ref, fast = twins(KINDS, kind, I, H, backend="triton", device=device, **OPTIONS[opt])
    x, hx, leaves = _make_input(kind, ref, inp, device)
    with torch.backends.cudnn.flags(enabled=False):
        out_ref = ref(x, hx)
    assert_matches_torch(fast(x, hx), out_ref, leaves, fast, ref)
    layers = ref.num_layers * (2 if ref.bidirectional else 1)
    assert len(forced["fwd"]) >= layers and len(forced["bwd"]) >= layers


@pytest.mark.parametrize("directions,members", [("separate", 1), ("fused", 2)])
@pytest.mark.parametrize("kind", list(KINDS))
def test_launches(kind, directions, members, forced, monkeypatch, device):
    """One launch per layer-direction (members stacked when fused); without a grid barrier
    (the interpreter) one per step.  The grid: hidden slices of BLOCK_J units, batch slices,
    members."""
    monkeypatch.setenv("FASTCELLS_DIRECTIONS", directions)
    _, fast = twins(KINDS, kind, I, H, backend="triton", device=device, bidirectional=True)
    x = torch.randn(T, B, I, dtype=torch.float64, device=device, requires_grad=True)
    fast(x)[0].sum().backward()
    per_layer = 1 if device == "cuda" else T
    grid = (triton.cdiv(H, persistent.BLOCK_J), 1, members)
    for calls in forced.values():
        assert calls == [grid] * (per_layer * 2 // members)


def _run(kind, mode, monkeypatch, device, packed=False, dtype=torch.float64, switch=None,
         hidden=H):
    """Outputs and gradients of a bidirectional ``kind`` under FASTCELLS_RECURRENCE
    ``mode`` (``switch``: the schedule the backward runs, if another)."""
    monkeypatch.setenv("FASTCELLS_RECURRENCE", mode)
    _, fast = twins(KINDS, kind, I, hidden, backend="triton", device=device, dtype=dtype,
                    bidirectional=True)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(T, B, I, generator=g, dtype=torch.float64).to(device, dtype)
    x.requires_grad_()
    inp = pack_padded_sequence(x, [5, 3, 2]) if packed else x
    out = fast(inp)
    if packed:
        out = (pad_packed_sequence(out[0])[0], out[1])
    outs = flat(out)
    if switch is not None:
        monkeypatch.setenv("FASTCELLS_RECURRENCE", switch)
    return outs + list(grads(loss_of(outs), [x, *fast.parameters()]))


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_same_as_step_chain(kind, packed, monkeypatch, device):
    """The same cell helpers in the same order: float64 results agree to a few ulps."""
    count = count_persistent(monkeypatch)
    step = _run(kind, "step", monkeypatch, device, packed)
    assert count == {"fwd": [], "bwd": []}
    pers = _run(kind, "persistent", monkeypatch, device, packed)
    assert count["fwd"] and count["bwd"]
    for a, b in zip(pers, step):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("fwd,bwd", [("step", "persistent"), ("persistent", "step")])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_buffers_are_shared_with_the_step_chain(kind, fwd, bwd, monkeypatch, device):
    """What one schedule's forward saves, the other's backward reads (LayerBuffers): switching
    between a forward and its backward changes no gradient."""
    mixed = _run(kind, fwd, monkeypatch, device, packed=True, switch=bwd)
    same = _run(kind, "step", monkeypatch, device, packed=True)
    for a, b in zip(mixed, same):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_low_precision_against_float64(kind, dtype, monkeypatch, device):
    """fp32 and bf16 (fp32 accumulation) within the dtype's tolerance of the float64 run."""
    want = _run(kind, "step", monkeypatch, device)
    got = _run(kind, "persistent", monkeypatch, device, dtype=dtype)
    n_out = 3 if kind == "lstm" else 2
    for a, b in zip(got[:n_out], want[:n_out]):
        assert_close(a, b, dtype)
    for a, b in zip(got[n_out:], want[n_out:]):
        assert a.dtype == dtype
        err = (a.double() - b).norm() / b.norm()
        assert err <= GRAD_REL_ERR[dtype], err


@pytest.mark.parametrize("kind", list(KINDS))
def test_gradcheck(kind, forced, device):
    _, fast = twins(KINDS, kind, 2, 3, backend="triton", device=device)
    x = torch.randn(3, 2, 2, dtype=torch.float64, device=device, requires_grad=True)
    params = list(fast.parameters())

    def f(x, *ps):
        return flat(torch.func.functional_call(fast, dict(zip(
            [n for n, _ in fast.named_parameters()], ps)), (x,)))
    assert torch.autograd.gradcheck(f, (x, *params), fast_mode=True)
    assert forced["bwd"]


def test_default_resolution_and_compile(forced, monkeypatch, device):
    """As users call it: no backend keyword (FASTCELLS_BACKEND=triton is what a GPU gets by
    default) and torch.compile(fullgraph=True): the persistent kernel runs inside the graph."""
    monkeypatch.setenv("FASTCELLS_BACKEND", "triton")
    torch.manual_seed(0)
    ref = torch.nn.GRU(I, H, num_layers=2).double().to(device)
    fast = fastcells.convert(ref)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64, device=device, requires_grad=True)
    backend = "inductor" if device == "cuda" else "aot_eager"
    torch._dynamo.reset()
    try:
        out = flat(torch.compile(fast, backend=backend, fullgraph=True)(x))
        want = flat(ref(x))
        for a, b in zip(out + list(grads(loss_of(out), [x, *fast.parameters()])),
                        want + list(grads(loss_of(want), [x, *ref.parameters()]))):
            assert_close(a, b, torch.float64)
    finally:
        torch._dynamo.reset()
    assert forced["fwd"] and forced["bwd"]


@pytest.mark.parametrize("setting", [None, "auto", "step"])
def test_not_chosen_unless_asked_or_measured(setting, monkeypatch, device):
    """On CPU (no measured table applies) ``auto`` and ``step`` keep the step chain."""
    if setting is None:
        monkeypatch.delenv("FASTCELLS_RECURRENCE", raising=False)
    else:
        monkeypatch.setenv("FASTCELLS_RECURRENCE", setting)
    if device == "cuda" and setting != "step":
        pytest.skip("on CUDA auto follows the committed table")
    calls = count_persistent(monkeypatch)
    _, fast = twins(KINDS, "lstm", I, H, backend="triton", device=device)
    x = torch.randn(T, B, I, dtype=torch.float64, device=device, requires_grad=True)
    fast(x)[0].sum().backward()
    assert calls == {"fwd": [], "bwd": []}


def test_ineligible_layers_take_the_step_chain(forced, device):
    """A projection (LSTM proj_size), a single step and a W_hh part above L1_BYTES run the
    step chain even when persistent is forced."""
    _, fast = twins(KINDS, "lstm", I, H, backend="triton", device=device, proj_size=3)
    x = torch.randn(T, B, I, dtype=torch.float64, device=device, requires_grad=True)
    fast(x)[0].sum().backward()
    _, fast = twins(KINDS, "gru", I, H, backend="triton", device=device)
    fast(x[:1])[0].sum().backward()
    assert forced == {"fwd": [], "bwd": []}
    kern = fastcells.cells.CELLS["lstm"].kernels
    big = persistent.L1_BYTES // (4 * persistent.BLOCK_J * 4) + 1   # fp32 bytes
    assert persistent.plan(kern, 4, big, torch.float32, torch.device(device)) is None
    assert persistent.plan(kern, 4, big - 1, torch.float32, torch.device(device)) is not None
    # a cell with kernels of its own (four gates, say, but not the LSTM's) has no branch here
    other = dataclasses.replace(kern, fwd=object())
    assert persistent.plan(other, 4, 8, torch.float32, torch.device(device)) is None


@pytest.mark.parametrize("kind", list(KINDS))
def test_streamed_weights(kind, monkeypatch, device):
    """W_hh's part streamed in BLOCK_K chunks (not RESIDENT), several chunks per step: the same
    results as the step chain."""
    monkeypatch.setattr(persistent, "RESIDENT_BYTES", 0)
    monkeypatch.setattr(persistent, "TILES", ((16, 16),))
    kern = fastcells.cells.CELLS[kind].kernels
    p = persistent.plan(kern, B, 37, torch.float64, torch.device(device))
    assert not p.resident and p.block_k == 16
    count = count_persistent(monkeypatch)
    step = _run(kind, "step", monkeypatch, device, packed=True, hidden=37)   # 3 chunks of 16
    pers = _run(kind, "persistent", monkeypatch, device, packed=True, hidden=37)
    assert count["fwd"] and count["bwd"]
    for a, b in zip(pers, step):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("B_", [1, 17, 70])
def test_plan_tiles_the_batch(B_, device):
    kern = fastcells.cells.CELLS["gru"].kernels
    p = persistent.plan(kern, B_, 40, torch.float32, torch.device(device), members=2)
    assert p.grid[1] * p.block_b >= B_ and p.grid[1] == -(-B_ // p.block_b)
    assert p.grid[0] * p.block_j >= 40 and p.grid[2] == 2
    assert p.resident and p.block_k >= 40 and p.barrier == (device == "cuda")
    big = persistent.plan(kern, B_, 512, torch.bfloat16, torch.device(device))
    assert not big.resident and big.block_k < 512
