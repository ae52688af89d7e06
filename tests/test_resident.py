"""The resident recurrence (kernels/resident.py) against the step loop (kernels/recurrence.py).

``FASTCELLS_RECURRENCE`` picks the path inside ``recurrence.layer_forward`` /
``layer_backward_steps``; the ``resident`` fixture forces the resident path and counts its
launches, so every test that means to run the resident kernels checks that it did.
"""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from fastcells.kernels import cuda_graph, dispatch, recurrence, resident
from fastcells.rnn_ops import recurrent_layer
from fastcells.weights import LayerWeights

from conftest import DEVICE
from rnn_utils import KINDS, flat, grads, loss_of, twins
from tolerances import TOL, assert_close


@pytest.fixture
def resident_calls(monkeypatch):
    """Returns a function(path) that sets FASTCELLS_RECURRENCE; the dict it returns counts the
    resident launches (forward, backward) from then on.  On CUDA a layer's first call runs its
    steps once eagerly and once under graph capture (kernels/cuda_graph.py): the capture is not
    counted, and use() empties the graph cache so that every layer call is a first call."""
    calls = {"fwd": 0, "bwd": 0}
    fwd, bwd = recurrence.resident_forward, recurrence.resident_backward

    def count(name, fn):
        def wrapped(*a, **k):
            if not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()):
                calls[name] += 1
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(recurrence, "resident_forward", count("fwd", fwd))
    monkeypatch.setattr(recurrence, "resident_backward", count("bwd", bwd))

    def use(path):
        monkeypatch.setenv(dispatch.ENV, path)
        cuda_graph.clear()
        calls.update(fwd=0, bwd=0)
        return calls

    return use


def make_layer(mode, T, B, I, H, dtype, bias=True, lengths=None, seed=0):
    """Random inputs of one layer: dict of x, w_ih, w_hh, b_ih, b_hh, h0, c0, batch_sizes."""
    G = resident.GATES[mode]
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.5):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    x = rnd(T, B, I, scale=1.0)
    batch_sizes = None
    if lengths is not None:   # sorted decreasing: rows active at step t are a prefix
        batch_sizes = torch.tensor([sum(n > t for n in lengths) for t in range(T)])
        for t in range(T):
            x[t, int(batch_sizes[t]):] = 0   # padding, as a PackedSequence's unpacked input
    L = dict(x=x, w_ih=rnd(G * H, I), w_hh=rnd(G * H, H),
             b_ih=rnd(G * H) if bias else None, b_hh=rnd(G * H) if bias else None,
             h0=rnd(B, H), c0=rnd(B, H) if mode == "lstm" else None)
    # on the test device; batch_sizes stays on the host, as a PackedSequence keeps it
    return {**{k: None if v is None else v.to(DEVICE) for k, v in L.items()},
            "batch_sizes": batch_sizes}


def _upstream(mode, T, B, H, dtype, with_dcn=True, seed=3):
    g = torch.Generator().manual_seed(seed)
    dy = torch.randn(T, B, H, generator=g, dtype=torch.float64).to(DEVICE, dtype)
    dcn = torch.randn(B, H, generator=g, dtype=torch.float64).to(DEVICE, dtype)
    return dy, dcn if mode == "lstm" and with_dcn else None


def run_layer(mode, L, dy, dcn):
    """Forward buffers (y, cs, saved) and the layer's gradients (dx, dh0, dc0, dw_ih, dw_hh,
    db_ih, db_hh) through recurrence's public functions, on whichever path the env picks."""
    y, cs, saved, m = recurrence.layer_forward(
        mode, L["x"], L["h0"], L["c0"], (L["w_ih"], L["w_hh"], L["b_ih"], L["b_hh"], None),
        L["batch_sizes"])
    dgx, dgh, carry, dc, dhs = recurrence.layer_backward_steps(
        mode, L["w_hh"], L["h0"], L["c0"], y, cs, saved, m, L["batch_sizes"], dy, dcn)
    dx, dh0, dw_ih, dw_hh, db_ih, db_hh, _ = recurrence.layer_grads(
        L["x"], L["w_ih"], L["w_hh"], L["h0"], y, m, dgx, dgh, carry, dhs, L["b_ih"] is not None)
    dc0 = None if dc is None else dc.to(y.dtype)
    return (y, cs, saved), (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh)


def _assert_all_close(actual, expected, **tol):
    for a, e in zip(actual, expected):
        assert (a is None) == (e is None)
        if a is not None:
            torch.testing.assert_close(a.double(), e.double(), **tol)


F64 = dict(atol=1e-12, rtol=1e-12)
# (mode, T, B, H, bias, lengths, dcn): every mode, odd sizes, packed batches with ended rows.
CASES = [
    pytest.param("lstm", 5, 3, 7, True, None, True, id="lstm-T5-B3-H7"),
    pytest.param("lstm", 4, 4, 13, False, (4, 3, 3, 1), False,
                 id="lstm-T4-B4-H13-nobias-packed-nodcn"),
    pytest.param("gru", 5, 3, 13, True, (5, 2, 1), True, id="gru-T5-B3-H13-packed"),
    pytest.param("gru", 3, 2, 7, False, None, True, id="gru-T3-B2-H7-nobias"),
    pytest.param("rnn_tanh", 6, 3, 7, True, (6, 4, 2), True, id="rnn_tanh-T6-B3-H7-packed"),
    pytest.param("rnn_relu", 4, 3, 13, False, None, True, id="rnn_relu-T4-B3-H13-nobias"),
    pytest.param("rnn_relu", 5, 4, 7, True, (5, 5, 3, 2), True, id="rnn_relu-T5-B4-H7-packed"),
]


@pytest.mark.parametrize("mode,T,B,H,bias,lengths,with_dcn", CASES)
def test_fp64_matches_step_path(mode, T, B, H, bias, lengths, with_dcn, resident_calls):
    """Forward buffers and every gradient equal the step loop's (the same buffers, so either
    path's forward feeds either path's backward)."""
    L = make_layer(mode, T, B, 5, H, torch.float64, bias=bias, lengths=lengths)
    dy, dcn = _upstream(mode, T, B, H, torch.float64, with_dcn)
    resident_calls("step")
    step_fwd, step_grads = run_layer(mode, L, dy, dcn)
    calls = resident_calls("resident")
    res_fwd, res_grads = run_layer(mode, L, dy, dcn)
    assert calls == {"fwd": 1, "bwd": 1}
    _assert_all_close(res_fwd, step_fwd, **F64)
    _assert_all_close(res_grads, step_grads, **F64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_low_precision_against_fp64(mode, dtype, resident_calls):
    """fp32/bf16/fp16 forward and backward against the float64 resident layer (itself equal to
    the step path above), with the tolerance table's bound for the dtype."""
    T, B, H = 4, 3, 13
    calls = resident_calls("resident")
    L = make_layer(mode, T, B, 5, H, torch.float64, lengths=(4, 2, 1))
    dy, dcn = _upstream(mode, T, B, H, torch.float64)
    ref_fwd, ref_grads = run_layer(mode, L, dy, dcn)
    low = {k: (v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v)
           for k, v in L.items()}
    # fp32 at its own precision: on CUDA its dots default to TF32 (as torch's RNNs), whose
    # products compound over the steps past the table's one-step bound (test_half covers TF32)
    with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
        out, g_low = run_layer(mode, low, dy.to(dtype), None if dcn is None else dcn.to(dtype))
    assert calls == {"fwd": 2, "bwd": 2}
    assert out[0].dtype == dtype and (out[1] is None or out[1].dtype == torch.float32)
    tol = TOL[dtype]
    for a, e in zip(out, ref_fwd):   # cs is fp32 in every low-precision run: the run's tolerance
        if a is not None:
            torch.testing.assert_close(a.double(), e, **tol)
    tol = {k: 4 * v for k, v in tol.items()}   # sums over T*B rows
    for a, e in zip(g_low, ref_grads):
        assert (a is None) == (e is None)
        if a is not None:
            assert a.dtype == dtype
            torch.testing.assert_close(a.double(), e, **tol)


def test_empty_batch(resident_calls):
    """B = 0 on the resident path: no launch, the step loop's buffers (dc0 = dcn)."""
    L = make_layer("lstm", 3, 0, 5, 7, torch.float64)
    dy, dcn = _upstream("lstm", 3, 0, 7, torch.float64)
    resident_calls("step")
    step = run_layer("lstm", L, dy, dcn)
    calls = resident_calls("resident")
    res = run_layer("lstm", L, dy, dcn)
    assert calls == {"fwd": 1, "bwd": 1}
    for a, e in zip(res, step):
        _assert_all_close(a, e, **F64)


# ----------------------------------------------------------------------------- public modules
T, B, I, H = 4, 3, 5, 7
MODULE_CASES = [pytest.param(kind, opts, packed, id=f"{kind}-{name}{'-packed' if packed else ''}")
                for kind in KINDS
                for name, opts, packed in (("bias", {}, True), ("nobias", dict(bias=False), False))]
MODULE_CASES += [
    pytest.param("lstm", dict(num_layers=2, bidirectional=True), True, id="lstm-bidir2-packed"),
    pytest.param("gru", dict(bias=False), True, id="gru-nobias-packed"),
    pytest.param("rnn_tanh", {}, False, id="rnn_tanh-bias"),
]


@pytest.mark.parametrize("kind,opts,packed", MODULE_CASES)
def test_modules_on_resident_path_match_torch(kind, opts, packed, resident_calls, monkeypatch):
    """fastcells.LSTM/GRU/RNN (triton backend) with FASTCELLS_RECURRENCE=resident against
    torch.nn in float64: every output (final states included) and every gradient."""
    calls = resident_calls("resident")
    # Count every layer-direction's launch: same-shaped directions share a CUDA graph, whose
    # replays call no Python.
    monkeypatch.setenv("FASTCELLS_CUDA_GRAPHS", "0")
    ref, fast = twins(KINDS, kind, I, H, backend="triton", **opts)
    ref, fast = ref.to(DEVICE), fast.to(DEVICE)
    L = ref.num_layers * (2 if ref.bidirectional else 1)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(T, B, I, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_()
    h = torch.randn(L, B, H, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_()
    c = torch.randn(L, B, H, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_()
    hx, leaves = ((h, c), [x, h, c]) if kind == "lstm" else (h, [x, h])
    inp = pack_padded_sequence(x, torch.tensor([2, 4, 3]), enforce_sorted=False) if packed else x
    fr, ff = flat(ref(inp, hx)), flat(fast(inp, hx))
    assert calls["fwd"] == L
    assert len(fr) == len(ff)
    for a, b in zip(ff, fr):
        assert_close(a, b, torch.float64)
    g_ref = grads(loss_of(fr), leaves + list(ref.parameters()))
    g_fast = grads(loss_of(ff), leaves + list(fast.parameters()))
    assert calls["bwd"] == L
    names = ["x", "h0", "c0"][:len(leaves)] + [n for n, _ in ref.named_parameters()]
    for name, a, b in zip(names, g_fast, g_ref):
        assert a is not None, name
        assert_close(a, b, torch.float64, msg=lambda m, name=name: f"d{name}: {m}")


def test_projected_lstm_falls_back_to_step(resident_calls):
    """proj_size > 0 cannot run resident: FASTCELLS_RECURRENCE=resident takes the step path."""
    calls = resident_calls("resident")
    ref, fast = twins(KINDS, "lstm", I, H, backend="triton", proj_size=3)
    ref, fast = ref.to(DEVICE), fast.to(DEVICE)
    x = torch.randn(T, B, I, dtype=torch.float64, device=DEVICE)
    for a, b in zip(flat(fast(x)), flat(ref(x))):
        assert_close(a, b, torch.float64)
    assert calls == {"fwd": 0, "bwd": 0}


@pytest.mark.parametrize("mode,lengths", [("lstm", (3, 2, 1)), ("gru", None), ("rnn_tanh", (3, 3, 1))],
                         ids=["lstm-packed", "gru", "rnn_tanh-packed"])
def test_gradcheck_resident_layer(mode, lengths, resident_calls):
    """The layer's autograd Function on the resident path, against finite differences."""
    calls = resident_calls("resident")
    Lr = make_layer(mode, 3, 3, 4, 5, torch.float64, lengths=lengths)
    names = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh")
    leaves = tuple(None if Lr[k] is None else Lr[k].requires_grad_() for k in names)

    def f(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        y, hn, cn = recurrent_layer(mode, x, h0, c0, LayerWeights(w_ih, w_hh, b_ih, b_hh),
                                    batch_sizes=Lr["batch_sizes"])
        return (y, hn) if cn is None else (y, hn, cn)

    # fast_mode: random directional derivatives (full Jacobians cost minutes in the interpreter)
    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-8, rtol=1e-6, fast_mode=True)
    assert calls["fwd"] > 0 and calls["bwd"] > 0


# ----------------------------------------------------------------------------- support, dispatch
def test_supports_resident():
    assert resident.supports_resident("lstm", 3, 256, 256, torch.bfloat16, False)
    assert not resident.supports_resident("lstm", 3, 257, 257, torch.float32, False)
    assert not resident.supports_resident("lstm", 3, 64, 32, torch.float32, True)
    assert not resident.supports_resident("gru", 3, 0, 0, torch.float32, False)
    assert "projected" in resident.reason_not_resident("lstm", 3, 64, 32, torch.float32, True)
    with pytest.raises(ValueError, match="hidden size 300"):
        resident.resident_forward("gru", {"y": torch.zeros(2, 1, 300)}, 2, 1, 300, 300, None, False)


def test_dispatch_off_by_default_and_override(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv(dispatch.ENV, raising=False)
    for dev in (cpu, cuda):
        assert dispatch.choose_recurrence("lstm", torch.bfloat16, 16, 128, 1024, dev) == "step"
    monkeypatch.setenv(dispatch.ENV, "resident")
    assert dispatch.choose_recurrence("lstm", torch.float32, 3, 7, 5, cpu) == "resident"
    assert dispatch.choose_recurrence("lstm", torch.float32, 3, 512, 5, cpu) == "step"  # H > MAX_H
    assert dispatch.choose_recurrence("lstm", torch.float32, 3, 64, 5, cpu, proj=True) == "step"
    assert dispatch.choose_recurrence("lstm", torch.float32, 3, 7, 1, cpu) == "step"  # a cell
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
