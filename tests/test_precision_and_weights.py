"""Tests that catch a state or accumulator kept in too low a precision, dropout in the wrong
place, and weights a user builds in unusual ways."""
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import fastcells
from rnn_utils import KINDS, flat, grads, loss_of, twins
from tolerances import TOL, U

BACKENDS = ["triton", "reference"]
TOL64 = TOL[torch.float64]  # parity with torch in float64 (tests/tolerances.py)
T, B, I, H = 6, 3, 4, 5


# ----------------------------------------------------- the LSTM's cell state precision
def _accumulating_lstm(dtype, device, backend):
    """An LSTM whose cell state grows by delta = 0.75 u(dtype) a step from c0 = 1: i = f = 1
    (to 2e-9), g = delta, weights zero.  Kept in fp32, c_T = 1 + T delta; rounded to ``dtype``
    every step, each increment is lost (1 + 0.75 u rounds back to 1)."""
    m = fastcells.LSTM(I, H, backend=backend).to(device=device, dtype=dtype)
    delta = 0.75 * U[dtype]
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.bias_ih_l0[:2 * H] = 20.0                       # i, f
        m.bias_ih_l0[2 * H:3 * H] = math.atanh(delta)     # g
    return m, delta


# The fused kernels only: the reference backend is the plain math in the dtype itself.
@pytest.mark.parametrize("backend", ["triton"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_lstm_cell_state_is_kept_in_fp32(dtype, backend, device):
    m, delta = _accumulating_lstm(dtype, device, backend)
    oracle = fastcells.LSTM(I, H, backend="reference").to(device=device, dtype=torch.float64)
    oracle.load_state_dict({k: v.double() for k, v in m.state_dict().items()})
    x = torch.randn(T, B, I, device=device).to(dtype)
    h0 = torch.zeros(1, B, H, device=device, dtype=dtype)
    c0 = torch.ones(1, B, H, device=device, dtype=dtype)
    _, (_, cn) = m(x, (h0, c0))
    _, (_, cn64) = oracle(x.double(), (h0.double(), c0.double()))
    assert cn64.min().item() > 1 + (T - 0.5) * delta      # the state did grow
    # c_T is rounded to the dtype once (<= u relative) plus fp32 arithmetic: allow 2 u.  A state
    # rounded every step loses all T * 0.75 u = 4.5 u.
    torch.testing.assert_close(cn.double(), cn64, rtol=2 * U[dtype], atol=0)


@pytest.mark.parametrize("backend", ["triton"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_lstm_cell_state_gradient_is_kept_in_fp32(dtype, backend, device):
    """Backward: dL/dc_t is carried from dL/dc_T = 1 and grows by ~0.75 u a step (the loss's
    weight on every output), so a carry rounded to the dtype each step loses it."""
    m, _ = _accumulating_lstm(dtype, device, backend)
    oracle = fastcells.LSTM(I, H, backend="reference").to(device=device, dtype=torch.float64)
    oracle.load_state_dict({k: v.double() for k, v in m.state_dict().items()})
    # the increment per step is k * o * (1 - tanh(c)^2) with o = 1/2 and c ~ 1 (0.42)
    k = 0.75 * U[dtype] / (0.5 * (1 - math.tanh(1.0) ** 2))
    res = []
    for mod, dt in ((m, dtype), (oracle, torch.float64)):
        x = torch.zeros(T, B, I, device=device, dtype=dt)
        c0 = torch.ones(1, B, H, device=device, dtype=dt, requires_grad=True)
        h0 = torch.zeros(1, B, H, device=device, dtype=dt)
        y, (_, cn) = mod(x, (h0, c0))
        (dc0,) = torch.autograd.grad(cn.sum() + k * y.sum(), [c0])
        res.append(dc0)
    assert res[1].min().item() > 1 + 4 * 0.75 * U[dtype]
    torch.testing.assert_close(res[0].double(), res[1], rtol=2 * U[dtype], atol=0)


# ------------------------------------------------------------------------------ dropout
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_no_dropout_after_the_last_layer(kind, backend, device):
    """Dropout acts between layers only: the last step of the output is the last layer's final
    state, and a one-layer module is torch's, dropout or not."""
    _, fast = twins(KINDS, kind, I, H, backend=backend, device=device, num_layers=2, dropout=0.5)
    fast.train()
    y, hn = fast(torch.randn(T, B, I, dtype=torch.float64, device=device))
    hn = hn[0] if kind == "lstm" else hn
    torch.testing.assert_close(y[-1], hn[-1], rtol=0, atol=0)
    with pytest.warns(UserWarning, match="dropout"):
        ref, one = twins(KINDS, kind, I, H, backend=backend, device=device, dropout=0.5)
    x = torch.randn(T, B, I, dtype=torch.float64, device=device)
    torch.testing.assert_close(flat(one(x))[0], flat(ref(x))[0], **TOL64)


# ------------------------------------------------------------------ weights built oddly
def _same_run(ref, fast, x, params_ref, params_fast):
    with torch.backends.cudnn.flags(enabled=False):  # torch's oracle: cuDNN's weight flattening
        out_ref = flat(ref(x))                       # refuses transposed weights (torch 2.11)
    out_fast = flat(fast(x))
    for a, b in zip(out_fast, out_ref):
        torch.testing.assert_close(a, b, **TOL64)
    for a, b in zip(grads(loss_of(out_fast), params_fast), grads(loss_of(out_ref), params_ref)):
        torch.testing.assert_close(a, b, **TOL64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["transposed", "strided-view", "flat-buffer-view"])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_non_contiguous_and_view_weights(kind, layout, backend, device):
    ref, fast = twins(KINDS, kind, I, H, backend=backend, device=device)
    for name, p in list(ref.named_parameters()):
        if layout == "transposed":
            if p.dim() < 2:
                continue
            w = p.detach().t().contiguous().t()
        elif layout == "strided-view":
            w = torch.zeros(*p.shape[:-1], 2 * p.shape[-1], dtype=p.dtype, device=device)
            w[..., ::2] = p.detach()
            w = w[..., ::2]
        else:
            w = torch.zeros(p.numel() + 7, dtype=p.dtype, device=device)
            w[7:] = p.detach().flatten()
            w = w[7:].view(p.shape)
        for m in (ref, fast):
            setattr(m, name, nn.Parameter(w.clone() if m is ref else w))
    # every replaced weight has the odd layout (on CUDA the biases left alone are views into
    # torch's flattened cuDNN buffer already)
    replaced = [p.dim() == 2 or layout != "transposed" for p in fast.parameters()]
    odd = [not p.is_contiguous() or p.storage_offset() > 0 for p in fast.parameters()]
    assert all(o for o, r in zip(odd, replaced) if r)
    x = torch.randn(T, B, I, dtype=torch.float64, device=device)
    _same_run(ref, fast, x, list(ref.parameters()), list(fast.parameters()))


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_parameter_shared_by_two_modules(backend, device):
    ref_a, fast_a = twins(KINDS, "gru", I, H, backend=backend, device=device, seed=1)
    ref_b, fast_b = twins(KINDS, "gru", H, H, backend=backend, device=device, seed=2)
    ref_b.weight_hh_l0 = ref_a.weight_hh_l0
    fast_b.weight_hh_l0 = fast_a.weight_hh_l0

    def run(a, b):
        return lambda x: b(a(x)[0])

    def params(a, b):  # each Parameter once
        return list(a.parameters()) + [p for p in b.parameters() if p is not a.weight_hh_l0]

    params_ref, params_fast = params(ref_a, ref_b), params(fast_a, fast_b)
    x = torch.randn(T, B, I, dtype=torch.float64, device=device)
    _same_run(run(ref_a, ref_b), run(fast_a, fast_b), x, params_ref, params_fast)


class _Orthogonalish(nn.Module):
    def forward(self, w):
        return w - 0.1 * w @ w.t() @ w / (w.norm() ** 2 + 1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_parametrized_weights(kind, backend, device):
    ref, fast = twins(KINDS, kind, I, H, backend=backend, device=device)
    for m in (ref, fast):
        parametrize.register_parametrization(m, "weight_hh_l0", _Orthogonalish())
        parametrize.register_parametrization(m, "weight_ih_l0", _Orthogonalish())
    x = torch.randn(T, B, I, dtype=torch.float64, device=device)
    _same_run(ref, fast, x, list(ref.parameters()), list(fast.parameters()))
    with parametrize.cached():
        _same_run(ref, fast, x, list(ref.parameters()), list(fast.parameters()))


# ------------------------------------------------------------- 64-bit offsets (GPU only)
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: 2^31 elements")
def test_rnn_offsets_past_2_31(device):
    """hs holds (T+1) * B * H > 2^31 fp16 elements: the rows of the last steps sit past 2^31.
    Batch rows are independent, so the last two rows are checked against the reference."""
    Bl, Hl, Il = 4096, 1024, 8
    Tl = 2 ** 31 // (Bl * Hl) + 1
    m = fastcells.RNN(Il, Hl, backend="triton").to(device=device, dtype=torch.float16)
    x = torch.randn(Tl, Bl, Il, device=device, dtype=torch.float16)
    with torch.no_grad():
        y, hn = m(x)
        assert y.numel() > 2 ** 31
        w = [p.double() for p in m.parameters()]
        y_ref, hn_ref, _ = fastcells.reference.layer(
            "rnn_tanh", x[:, -2:].double(), torch.zeros(2, Hl, device=device, dtype=torch.float64),
            None, fastcells.weights.LayerWeights(*w))
    tol = dict(rtol=1e-2, atol=1e-2)   # fp16 over H = 1024 products accumulated in fp32
    torch.testing.assert_close(y[-1, -2:].double(), y_ref[-1], **tol)
    torch.testing.assert_close(hn[0, -2:].double(), hn_ref, **tol)
