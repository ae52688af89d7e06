"""The resident recurrence (kernels/resident.py) against the step loop (kernels/recurrence.py).

The resident launchers take the same buffer dicts as the step loop's ``steps(b)``; the helpers
below build them the way ``recurrence.layer_forward`` / ``layer_backward`` do and finish the
backward with the same hoisted GEMMs, so a resident layer can be compared buffer for buffer and
gradient for gradient with the step path, and gradchecked.
"""
import pytest
import torch

from fastcells.kernels import dispatch, recurrence, resident
from fastcells.kernels.common import acc_dtype

from tolerances import TOL

MODES = ("lstm", "gru", "rnn_tanh", "rnn_relu")


def make_layer(mode, T, B, I, H, dtype, bias=True, lengths=None, seed=0, device="cpu"):
    """Random inputs of one layer: dict of x, w_ih, w_hh, b_ih, b_hh, h0, c0, batch_sizes."""
    G = resident.GATES[mode]
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.5):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(device, dtype)

    x = rnd(T, B, I, scale=1.0)
    batch_sizes = None
    if lengths is not None:   # sorted decreasing: rows active at step t are a prefix
        batch_sizes = torch.tensor([sum(n > t for n in lengths) for t in range(T)])
        for t in range(T):
            x[t, int(batch_sizes[t]):] = 0   # padding, as a PackedSequence's unpacked input
    return dict(x=x, w_ih=rnd(G * H, I), w_hh=rnd(G * H, H),
                b_ih=rnd(G * H) if bias else None, b_hh=rnd(G * H) if bias else None,
                h0=rnd(B, H), c0=rnd(B, H) if mode == "lstm" else None, batch_sizes=batch_sizes)


def _rows(batch_sizes, device):
    return None if batch_sizes is None else batch_sizes.to(device=device, dtype=torch.int32)


def resident_layer_forward(mode, x, w_ih, w_hh, b_ih, b_hh, h0, c0=None, batch_sizes=None):
    """(hs, cs, saved) as recurrence.layer_forward returns them, from the resident kernel."""
    T, B, _ = x.shape
    H = w_hh.shape[1]
    dt, dev = x.dtype, x.device
    b = dict(xp=torch.matmul(x, w_ih.t()).contiguous(), w=w_hh.contiguous(), h0=h0.contiguous(),
             hs=torch.empty(T + 1, B, H, dtype=dt, device=dev))
    if b_ih is not None:
        b.update(b1=b_ih.contiguous(), b2=b_hh.contiguous())
    if mode == "lstm":
        b.update(c0=c0.contiguous(), cs=torch.empty(T + 1, B, H, dtype=acc_dtype(dt), device=dev))
    if resident.SAVED[mode]:
        b["saved"] = torch.empty(T, B, resident.SAVED[mode] * H, dtype=dt, device=dev)
    resident.resident_forward(mode, b, T, B, H, H, _rows(batch_sizes, dev), b_ih is not None)
    return b["hs"], b.get("cs"), b.get("saved")


def resident_layer_backward(mode, x, w_ih, w_hh, has_bias, hs, cs, saved, batch_sizes, dy, dhn,
                            dcn=None):
    """dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh as recurrence.layer_backward returns them (no
    projection), with the resident kernel in place of the step loop."""
    T, B, H = hs.shape[0] - 1, hs.shape[1], hs.shape[2]
    GH = w_hh.shape[0]
    dt, dev = x.dtype, x.device
    acc = acc_dtype(dt)
    b = dict(dy=dy.contiguous(), w=w_hh.contiguous(), hs=hs, carry0=dhn.to(acc),
             dgx=torch.empty(T, B, GH, dtype=dt, device=dev),
             carry=torch.empty(B, H, dtype=acc, device=dev))
    if saved is not None:
        b["saved"] = saved
    if mode == "gru":
        b["dgh"] = torch.empty(T, B, GH, dtype=dt, device=dev)
    if mode == "lstm":
        b.update(cs=cs, dc0=dcn.to(acc), dc=torch.empty(B, H, dtype=acc, device=dev))
    resident.resident_backward(mode, b, T, B, H, H, _rows(batch_sizes, dev))
    # The hoisted GEMMs, exactly as recurrence.layer_backward runs them after its loop.
    dgx = b["dgx"]
    dgh = b.get("dgh", dgx)
    dgx2, dgh2 = dgx.reshape(T * B, GH), dgh.reshape(T * B, GH)
    dh0 = b["carry"].clone()
    if T > 0:
        dh0 += dgh[0].to(acc) @ w_hh.to(acc)
    dw_hh = dgh2.t() @ hs[:T].reshape(T * B, H)
    dw_ih = dgx2.t() @ x.reshape(T * B, -1)
    dx = torch.matmul(dgx, w_ih)
    db_ih = dgx2.sum(0) if has_bias else None
    db_hh = dgh2.sum(0) if has_bias else None
    dc0 = b["dc"].to(dt) if mode == "lstm" else None
    return dx, dh0.to(dt), dc0, dw_ih, dw_hh, db_ih, db_hh


def _layer_args(L):
    return (L["x"], L["w_ih"], L["w_hh"], L["b_ih"], L["b_hh"], L["h0"], L["c0"], L["batch_sizes"])


def _upstream(mode, T, B, H, dtype, seed=3):
    g = torch.Generator().manual_seed(seed)
    dy = torch.randn(T, B, H, generator=g, dtype=torch.float64).to(dtype)
    dhn = torch.randn(B, H, generator=g, dtype=torch.float64).to(dtype)
    dcn = torch.randn(B, H, generator=g, dtype=torch.float64).to(dtype) if mode == "lstm" else None
    return dy, dhn, dcn


def _assert_all_close(actual, expected, **tol):
    for a, e in zip(actual, expected):
        assert (a is None) == (e is None)
        if a is not None:
            torch.testing.assert_close(a.double(), e.double(), **tol)


F64 = dict(atol=1e-12, rtol=1e-12)
# (mode, T, B, H, bias, lengths): every mode, odd sizes, packed batches with ended rows.
CASES = [
    pytest.param("lstm", 5, 3, 7, True, None, id="lstm-T5-B3-H7"),
    pytest.param("lstm", 4, 4, 13, False, (4, 3, 3, 1), id="lstm-T4-B4-H13-nobias-packed"),
    pytest.param("gru", 5, 3, 13, True, (5, 2, 1), id="gru-T5-B3-H13-packed"),
    pytest.param("gru", 3, 2, 7, False, None, id="gru-T3-B2-H7-nobias"),
    pytest.param("rnn_tanh", 6, 3, 7, True, (6, 4, 2), id="rnn_tanh-T6-B3-H7-packed"),
    pytest.param("rnn_relu", 4, 3, 13, False, None, id="rnn_relu-T4-B3-H13-nobias"),
    pytest.param("rnn_relu", 5, 4, 7, True, (5, 5, 3, 2), id="rnn_relu-T5-B4-H7-packed"),
]


@pytest.mark.parametrize("mode,T,B,H,bias,lengths", CASES)
def test_fp64_matches_step_path_and_feeds_it(mode, T, B, H, bias, lengths):
    """Forward buffers equal the step loop's; the resident backward on the step forward's
    buffers and the step backward on the resident forward's both give the step gradients."""
    L = make_layer(mode, T, B, 5, H, torch.float64, bias=bias, lengths=lengths)
    step = recurrence.layer_forward(mode, *_layer_args(L))[:3]
    res = resident_layer_forward(mode, *_layer_args(L))
    _assert_all_close(res, step, **F64)
    dy, dhn, dcn = _upstream(mode, T, B, H, torch.float64)
    common = (mode, L["x"], L["w_ih"], L["w_hh"], bias)
    step_grads = recurrence.layer_backward(*common, *step, None, L["batch_sizes"], dy, dhn, dcn)[:7]
    # resident backward on the step forward's buffers
    res_grads = resident_layer_backward(*common, *step, L["batch_sizes"], dy, dhn, dcn)
    _assert_all_close(res_grads, step_grads, **F64)
    # step backward on the resident forward's buffers
    cross = recurrence.layer_backward(*common, *res, None, L["batch_sizes"], dy, dhn, dcn)[:7]
    _assert_all_close(cross, step_grads, **F64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_low_precision_against_fp64(mode, dtype):
    """fp32/bf16/fp16 forward and backward against the float64 resident layer (itself equal to
    the step path above), with the tolerance table's bound for the dtype."""
    T, B, H = 4, 3, 13
    L = make_layer(mode, T, B, 5, H, torch.float64, lengths=(4, 2, 1))
    ref = resident_layer_forward(mode, *_layer_args(L))
    low = {k: (v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v)
           for k, v in L.items()}
    out = resident_layer_forward(mode, *_layer_args(low))
    assert out[0].dtype == dtype and (out[1] is None or out[1].dtype == torch.float32)
    for a, e in zip(out, ref):   # cs is fp32 in every low-precision run: the run's tolerance
        if a is not None:
            torch.testing.assert_close(a.double(), e, **TOL[dtype])
    dy, dhn, dcn = _upstream(mode, T, B, H, torch.float64)
    g_ref = resident_layer_backward(mode, L["x"], L["w_ih"], L["w_hh"], True, *ref,
                                    L["batch_sizes"], dy, dhn, dcn)
    g_low = resident_layer_backward(mode, low["x"], low["w_ih"], low["w_hh"], True, *out,
                                    L["batch_sizes"], dy.to(dtype), dhn.to(dtype),
                                    None if dcn is None else dcn.to(dtype))
    tol = {k: 4 * v for k, v in TOL[dtype].items()}   # sums over T*B rows
    for a, e in zip(g_low, g_ref):
        assert (a is None) == (e is None)
        if a is not None:
            assert a.dtype == dtype
            torch.testing.assert_close(a.double(), e, **tol)


def test_empty_and_zero_sizes():
    """T = 0 and B = 0 do what the step loop does (copies only, no launch)."""
    for T, B in ((0, 3), (3, 0)):
        L = make_layer("lstm", T, B, 5, 7, torch.float64)
        step = recurrence.layer_forward("lstm", *_layer_args(L))[:3]
        res = resident_layer_forward("lstm", *_layer_args(L))
        _assert_all_close(res, step, **F64)


class _ResidentLayer(torch.autograd.Function):
    """A full layer from the resident forward and backward (the test's own Function)."""

    @staticmethod
    def forward(ctx, mode, batch_sizes, x, w_ih, w_hh, b_ih, b_hh, h0, c0):
        hs, cs, saved = resident_layer_forward(mode, x, w_ih, w_hh, b_ih, b_hh, h0, c0, batch_sizes)
        ctx.save_for_backward(x, w_ih, w_hh, hs, cs, saved)
        ctx.mode, ctx.batch_sizes, ctx.bias = mode, batch_sizes, b_ih is not None
        T = x.shape[0]
        cn = cs[T].to(x.dtype) if cs is not None else torch.zeros(0, dtype=x.dtype)
        return hs[1:].clone(), hs[T].clone(), cn

    @staticmethod
    def backward(ctx, dy, dhn, dcn):
        x, w_ih, w_hh, hs, cs, saved = ctx.saved_tensors
        g = resident_layer_backward(ctx.mode, x, w_ih, w_hh, ctx.bias, hs,
                                    cs if ctx.mode == "lstm" else None,
                                    saved if resident.SAVED[ctx.mode] else None,
                                    ctx.batch_sizes, dy, dhn, dcn if ctx.mode == "lstm" else None)
        dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh = g
        return None, None, dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0


@pytest.mark.parametrize("mode,lengths", [("lstm", (3, 2, 1)), ("gru", None), ("rnn_tanh", (3, 3, 1))],
                         ids=["lstm-packed", "gru", "rnn_tanh-packed"])
def test_gradcheck_resident_layer(mode, lengths):
    L = make_layer(mode, 3, 3, 4, 5, torch.float64, lengths=lengths)
    args = [L[k] for k in ("x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0")]
    leaves = [a.requires_grad_() if a is not None else None for a in args]

    def f(*a):
        return _ResidentLayer.apply(mode, L["batch_sizes"], *a)

    if mode != "lstm":
        leaves[-1] = None
    # fast_mode: random directional derivatives (full Jacobians cost minutes in the interpreter)
    assert torch.autograd.gradcheck(f, tuple(leaves), eps=1e-6, atol=1e-8, rtol=1e-6, fast_mode=True)


# ----------------------------------------------------------------------------- support, dispatch
def test_supports_resident():
    assert resident.supports_resident("lstm", 3, 256, 256, torch.bfloat16, False)
    assert not resident.supports_resident("lstm", 3, 257, 257, torch.float32, False)
    assert not resident.supports_resident("lstm", 3, 64, 32, torch.float32, True)
    assert not resident.supports_resident("gru", 3, 0, 0, torch.float32, False)
    assert "projected" in resident.reason_not_resident("lstm", 3, 64, 32, torch.float32, True)
    with pytest.raises(ValueError, match="hidden size 300"):
        resident.resident_forward("gru", {"hs": torch.zeros(2, 1, 300)}, 1, 1, 300, 300, None, False)


def test_dispatch_off_by_default_and_override(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv(dispatch.ENV, raising=False)
    for dev in (cpu, cuda):
        assert dispatch.choose_recurrence("lstm", torch.bfloat16, 16, 128, 1024, dev) == "step"
    monkeypatch.setenv(dispatch.ENV, "resident")
    assert dispatch.choose_recurrence("lstm", torch.float32, 3, 7, 5, cpu) == "resident"
    assert dispatch.choose_recurrence("lstm", torch.float32, 3, 512, 5, cpu) == "step"  # H > MAX_H
    assert dispatch.choose_recurrence("lstm", torch.float32, 3, 64, 5, cpu, proj=True) == "step"
    monkeypatch.setenv(dispatch.ENV, "step")
    assert dispatch.choose_recurrence("gru", torch.float32, 3, 7, 5, cpu) == "step"
    monkeypatch.setenv(dispatch.ENV, "fastest")
    with pytest.raises(ValueError, match="FASTCELLS_RECURRENCE"):
        dispatch.choose_recurrence("gru", torch.float32, 3, 7, 5, cpu)


def test_dispatch_table_rule(monkeypatch):
    """A measured rule turns the resident path on only inside the box it was measured in."""
    monkeypatch.delenv(dispatch.ENV, raising=False)
    rule = dispatch.Rule(gpu="NVIDIA H200", mode="lstm", dtype="bf16", max_B=16, max_H=256, min_T=100)
    monkeypatch.setattr(dispatch, "RULES", (rule,))
    monkeypatch.setattr(dispatch, "_gpu_name", lambda device: "NVIDIA H200")
    cuda = torch.device("cuda")
    assert dispatch.choose_recurrence("lstm", torch.bfloat16, 16, 256, 1024, cuda) == "resident"
    assert dispatch.choose_recurrence("lstm", torch.bfloat16, 32, 256, 1024, cuda) == "step"
    assert dispatch.choose_recurrence("lstm", torch.bfloat16, 16, 256, 50, cuda) == "step"
    assert dispatch.choose_recurrence("gru", torch.bfloat16, 16, 256, 1024, cuda) == "step"
    assert dispatch.choose_recurrence("lstm", torch.float32, 16, 256, 1024, cuda) == "step"
    monkeypatch.setattr(dispatch, "_gpu_name", lambda device: "NVIDIA H100 80GB HBM3")
    assert dispatch.choose_recurrence("lstm", torch.bfloat16, 16, 256, 1024, cuda) == "step"
    assert dispatch.choose_recurrence("lstm", torch.bfloat16, 16, 256, 1024, torch.device("cpu")) == "step"
