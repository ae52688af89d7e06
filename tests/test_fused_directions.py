"""Both directions of a bidirectional layer in the same launches (FASTCELLS_DIRECTIONS=fused):
the step kernels' member axis (kernels.common.member), the batched hoisted GEMMs, and
the fallbacks (reference math for create_graph, member by member under vmap), against torch.nn
in float64.  Experimental: off by default until a GPU run has measured it (fastcells.experimental)."""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from fastcells.kernels.config import fused_directions as fuse_directions
from rnn_utils import KINDS, count_launches, flat, loss_of, twins
from test_rnn_parity import _make_input, assert_matches_torch
from tolerances import assert_close

T, B, I, H = 5, 3, 4, 7


@pytest.fixture
def fused(monkeypatch):
    monkeypatch.setenv("FASTCELLS_DIRECTIONS", "fused")


CASES = [(kind, opt, inp) for kind in KINDS
         for opt, inp in (("bidir", "given-hx"), ("bidir2-nobias", "packed"))]
CASES += [("lstm", "bidir-batch_first", "noncontig"), ("gru", "bidir", "unbatched"),
          ("lstm", "bidir", "packed-sorted"), ("lstm", "bidir2", "zeros-hx")]
OPTIONS = {"bidir": dict(bidirectional=True), "bidir2": dict(num_layers=2, bidirectional=True),
           "bidir2-nobias": dict(num_layers=2, bidirectional=True, bias=False),
           "bidir-batch_first": dict(bidirectional=True, batch_first=True)}


@pytest.mark.parametrize("kind,opt,inp", CASES)
def test_fused_directions_match_torch(kind, opt, inp, fused, device):
    ref, fast = twins(KINDS, kind, I, H, backend="triton", device=device, **OPTIONS[opt])
    x, hx, leaves = _make_input(kind, ref, inp, device)
    with torch.backends.cudnn.flags(enabled=False):
        out_ref = ref(x, hx)
    assert_matches_torch(fast(x, hx), out_ref, leaves, fast, ref)


@pytest.mark.parametrize("setting,launches,members", [("fused", T, 2), ("separate", 2 * T, 1)])
def test_one_launch_per_step_for_both_directions(setting, launches, members, monkeypatch,
                                                 device):
    monkeypatch.setenv("FASTCELLS_DIRECTIONS", setting)
    monkeypatch.setenv("FASTCELLS_CUDA_GRAPHS", "0")  # count Python launches, not a capture's
    calls = count_launches(monkeypatch, "lstm")
    _, fast = twins(KINDS, "lstm", I, H, backend="triton", device=device, bidirectional=True)
    x = torch.randn(T, B, I, dtype=torch.float64, device=device, requires_grad=True)
    fast(x)[0].sum().backward()
    for grids in calls.values():
        assert len(grids) == launches
        assert all((g[2] if len(g) == 3 else 1) == members for g in grids)


def test_fused_packed_batches_one_launch_per_step(fused, monkeypatch, device):
    calls = count_launches(monkeypatch, "gru")
    _, fast = twins(KINDS, "gru", I, H, backend="triton", device=device, bidirectional=True)
    x = pack_padded_sequence(torch.randn(T, B, I, dtype=torch.float64, device=device),
                             torch.tensor([5, 3, 1]))
    fast(x)[0].data.sum().backward()
    assert len(calls["fwd"]) == T and len(calls["bwd"]) == T


def test_fused_create_graph_matches_separate(monkeypatch, device):
    """A gradient penalty (create_graph=True) differentiates the reference math member by
    member: the same second-order gradients as the separate directions."""
    _, fast = twins(KINDS, "lstm", I, H, backend="triton", device=device, bidirectional=True)
    x = torch.randn(T, B, I, dtype=torch.float64, device=device)
    results = {}
    for setting in ("separate", "fused"):
        monkeypatch.setenv("FASTCELLS_DIRECTIONS", setting)
        xi = x.clone().requires_grad_()
        (gx,) = torch.autograd.grad(loss_of(flat(fast(xi))), xi, create_graph=True)
        results[setting] = torch.autograd.grad(gx.square().sum(), [xi, *fast.parameters()])
    for a, b in zip(results["fused"], results["separate"]):
        assert_close(a, b, torch.float64)


def test_fused_vectorized_jacobian_matches_separate(monkeypatch, device):
    """jacobian(vectorize=True) batches the backward with torch's legacy vmap: the fused layer
    then takes its members one by one."""
    _, fast = twins(KINDS, "gru", 2, 3, backend="triton", device=device, bidirectional=True)
    x = torch.randn(2, 1, 2, dtype=torch.float64, device=device)
    jac = {}
    for setting in ("separate", "fused"):
        monkeypatch.setenv("FASTCELLS_DIRECTIONS", setting)
        jac[setting] = torch.autograd.functional.jacobian(lambda v: fast(v)[0], x,
                                                          vectorize=True)
    assert_close(jac["fused"], jac["separate"], torch.float64)


def test_fused_gradcheck(fused, device):
    _, fast = twins(KINDS, "rnn_tanh", 2, 3, backend="triton", device=device,
                    bidirectional=True)
    x = torch.randn(2, 1, 2, dtype=torch.float64, device=device, requires_grad=True)
    h0 = torch.randn(2, 1, 3, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, h: fast(x, h)[0], (x, h0))


def test_torch_func_takes_the_separate_directions(fused, device):
    ref, fast = twins(KINDS, "lstm", I, H, backend="triton", device=device, bidirectional=True)
    x = torch.randn(T, B, I, dtype=torch.float64, device=device)
    params = dict(fast.named_parameters())
    got = torch.func.grad(lambda p: torch.func.functional_call(fast, p, (x,))[0].sum())(params)
    with torch.backends.cudnn.flags(enabled=False):
        ref(x)[0].sum().backward()
    for name, p in ref.named_parameters():
        assert_close(got[name], p.grad, torch.float64)


def test_setting_is_checked(monkeypatch):
    monkeypatch.setenv("FASTCELLS_DIRECTIONS", "both")
    with pytest.raises(ValueError, match="FASTCELLS_DIRECTIONS"):
        fuse_directions()
    monkeypatch.delenv("FASTCELLS_DIRECTIONS")
    assert fuse_directions() is False   # off until a GPU run has measured it
