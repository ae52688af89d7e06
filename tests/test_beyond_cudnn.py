"""What cuDNN refuses and fastcells does: torch.compile without graph breaks, autocast, double
backward, backward in eval mode, determinism, convert(model)."""
import pytest
import torch
from torch import nn

import fastcells
from fastcells import functional
from rnn_utils import CELLS, KINDS, flat, grads, loss_of, twins
from tolerances import TOL, assert_close

T, B, I, H = 4, 3, 5, 7
COMPILE_BACKEND = "inductor" if torch.cuda.is_available() else "aot_eager"


# ------------------------------------------------------------------------------ torch.compile
@pytest.mark.parametrize("kind", list(KINDS))
def test_compile_fullgraph_modules(kind, device):
    torch._dynamo.reset()
    extra = dict(proj_size=3) if kind == "lstm" else {}
    _, fast = twins(KINDS, kind, I, H, backend="triton", dtype=torch.float32, device=device,
                    num_layers=2, bidirectional=True, **extra)
    compiled = torch.compile(fast, backend=COMPILE_BACKEND, fullgraph=True)
    x = torch.randn(T, B, I, device=device, requires_grad=True)
    out_e, out_c = flat(fast(x)), flat(compiled(x))
    for a, b in zip(out_c, out_e):
        assert_close(a, b, torch.float32)
    g_e = grads(loss_of(out_e), [x] + list(fast.parameters()))
    g_c = grads(loss_of(out_c), [x] + list(fast.parameters()))
    for a, b in zip(g_c, g_e):
        assert_close(a, b, torch.float32)


@pytest.mark.parametrize("kind", list(CELLS))
def test_compile_fullgraph_cells(kind, device):
    torch._dynamo.reset()
    _, cell = twins(CELLS, kind, I, H, backend="triton", dtype=torch.float32, device=device)

    def unroll(xs):
        state = None
        outs = []
        for x in xs:
            state = cell(x, state)
            outs.append(state[0] if kind == "lstm" else state)
        return torch.stack(outs)

    xs = torch.randn(T, B, I, device=device)
    assert_close(torch.compile(unroll, backend=COMPILE_BACKEND, fullgraph=True)(xs),
                 unroll(xs), torch.float32)


def test_compile_model_with_fastcells_inside(device):
    """A whole model (embedding, LSTM, decoder) compiles as one graph; torch's own LSTM is
    left exactly as Dynamo treats it without fastcells (it still refuses it)."""
    torch._dynamo.reset()

    class Model(nn.Module):
        def __init__(self, rnn):
            super().__init__()
            self.emb = nn.Embedding(11, I)
            self.rnn = rnn
            self.out = nn.Linear(H, 11)

        def forward(self, tokens):
            y, _ = self.rnn(self.emb(tokens))
            return self.out(y)

    model = Model(fastcells.LSTM(I, H, backend="triton")).to(device)
    tokens = torch.randint(0, 11, (T, B), device=device)
    compiled = torch.compile(model, backend=COMPILE_BACKEND, fullgraph=True)
    assert_close(compiled(tokens), model(tokens), torch.float32)
    torch._dynamo.reset()
    with pytest.raises(Exception, match="RNN, GRU, or LSTM"):
        torch.compile(Model(nn.LSTM(I, H)).to(device), backend="aot_eager", fullgraph=True)(tokens)


# ------------------------------------------------------------------------------ double backward
@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_gradgradcheck(mode, device):
    gates = {"lstm": 4, "gru": 3}.get(mode, 1)
    g = torch.Generator().manual_seed(0)
    r = lambda *s: (0.5 * torch.randn(*s, generator=g, dtype=torch.float64)).to(device).requires_grad_()  # noqa: E731
    x, h0, c0 = r(3, 2, 3), r(1, 2, 4), r(1, 2, 4)
    ws = [r(gates * 4, 3), r(gates * 4, 4), r(gates * 4), r(gates * 4)]

    def fn(x, h0, c0, *ws):
        hx = (h0, c0) if mode == "lstm" else h0
        out, hid = functional.rnn(mode, x, hx, ws, backend="triton")
        return (out,) + (tuple(hid) if mode == "lstm" else (hid,))

    assert torch.autograd.gradgradcheck(fn, (x, h0, c0 if mode == "lstm" else c0.detach(), *ws),
                                        fast_mode=True)


@pytest.mark.parametrize("kind", list(KINDS))
def test_gradient_penalty_through_module(kind, device):
    """create_graph=True through a module, as a gradient penalty does: matches torch (double
    backward of torch's CPU RNN; cuDNN refuses it)."""
    ref, fast = twins(KINDS, kind, I, H, backend="triton", device=device, num_layers=2)
    x = torch.randn(T, B, I, dtype=torch.float64, device=device)
    results = []
    for m in (ref, fast):
        xi = x.clone().requires_grad_()
        with torch.backends.cudnn.flags(enabled=False):  # cuDNN: no double backward
            y = flat(m(xi))
        (gx,) = torch.autograd.grad(loss_of(y), xi, create_graph=True)
        penalty = (gx ** 2).sum()
        results.append(torch.autograd.grad(penalty, list(m.parameters())))
    for a, b in zip(results[1], results[0]):
        assert_close(a, b, torch.float64)


# ------------------------------------------------------------------------- backward in eval mode
@pytest.mark.parametrize("kind", list(KINDS))
def test_backward_in_eval_mode(kind, device):
    _, fast = twins(KINDS, kind, I, H, backend="triton", device=device, num_layers=2)
    x = torch.randn(T, B, I, dtype=torch.float64, device=device, requires_grad=True)
    fast.train()
    g_train = grads(loss_of(flat(fast(x))), [x] + list(fast.parameters()))
    fast.eval()
    g_eval = grads(loss_of(flat(fast(x))), [x] + list(fast.parameters()))
    for a, b in zip(g_eval, g_train):  # no dropout: the same gradients in both modes
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ------------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("kind", list(KINDS))
def test_bit_identical_runs(kind, device):
    _, fast = twins(KINDS, kind, I, H, backend="triton", dtype=torch.float32, device=device,
                    num_layers=2, bidirectional=True, dropout=0.3)
    fast.train()
    x = torch.randn(T, B, I, device=device, requires_grad=True)
    runs = []
    for _ in range(2):
        torch.manual_seed(123)  # dropout masks reproducible from the seed
        out = flat(fast(x))
        runs.append(out + list(grads(loss_of(out), [x] + list(fast.parameters()))))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------- autocast
AUTOCAST_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("table,kind", [(KINDS, k) for k in KINDS] + [(CELLS, k) for k in CELLS],
                         ids=[f"layer-{k}" for k in KINDS] + [f"cell-{k}" for k in CELLS])
def test_autocast_output_dtypes_match_torch(table, kind, dtype):
    dev = AUTOCAST_DEVICE
    ref, fast = twins(table, kind, I, H, backend="triton", dtype=torch.float32, device=dev)
    x = torch.randn(*((T, B, I) if table is KINDS else (B, I)), device=dev, requires_grad=True)
    with torch.autocast(dev, dtype=dtype):
        out_fast = flat(fast(x))
        try:
            out_ref = flat(ref(x))
        except RuntimeError:  # torch's CPU LSTM fails under fp16 autocast (oneDNN), and under
            # bf16 autocast on CPUs without bf16 support ("could not create a primitive"); we don't
            assert dev == "cpu" and kind == "lstm"
            out_ref = [o.to(dtype) for o in flat(ref.to(dtype)(x.detach().to(dtype)))]
    for a, b in zip(out_fast, out_ref):
        assert a.dtype == b.dtype
        # Both sides compute in the autocast dtype (or both in fp32): compare at its tolerance.
        torch.testing.assert_close(a.float(), b.float(), **TOL[dtype])
    loss_of(out_fast).backward()
    assert x.grad.dtype == torch.float32
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in fast.parameters())


# ----------------------------------------------------------------------------------- convert
def test_convert_swaps_modules_and_shares_parameters():
    model = nn.Sequential(nn.Linear(I, I), nn.LSTM(I, H, num_layers=2),
                          nn.ModuleDict({"cell": nn.GRUCell(I, H), "rnn": nn.RNN(I, H)}))
    params_before = list(model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(T, B, I)
    y_before = model[1](x)[0]
    out = fastcells.convert(model, backend="reference")
    assert out is model
    assert type(model[1]) is fastcells.LSTM and model[1].backend == "reference"
    assert type(model[2]["cell"]) is fastcells.GRUCell
    assert type(model[2]["rnn"]) is fastcells.RNN
    assert type(model[0]) is nn.Linear
    assert all(a is b for a, b in zip(model.parameters(), params_before))
    torch.testing.assert_close(model[1](x)[0], y_before)
    model[1].flatten_parameters()  # accepted and harmless
    model[1](x)[0].sum().backward()
    w = model[1].weight_hh_l0.detach().clone()
    opt.step()  # the optimizer built before convert still trains the converted model
    assert not torch.equal(model[1].weight_hh_l0, w)
    lone = fastcells.convert(nn.LSTMCell(I, H))
    assert type(lone) is fastcells.LSTMCell
    with pytest.raises(ValueError, match="unknown fastcells backend"):
        fastcells.convert(model, backend="cudnn")
