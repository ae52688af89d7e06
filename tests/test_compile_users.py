"""torch.compile and torch.export as users call them: no ``backend=`` (the default resolution),
``FASTCELLS_BACKEND=triton`` (on CPU the interpreter: what the default gives on a GPU),
``use_backend``, and the keyword; torch.nn's own module doing the same is the oracle."""
import contextlib

import pytest
import torch
import torch._dynamo
from torch import nn

import fastcells
from rnn_utils import flat, grads, loss_of
from tolerances import assert_close
from user_routes import ROUTES, user_route

T, B, I, H, V = 4, 3, 5, 7, 11
F32 = torch.float32
# aot_eager runs the traced graphs with torch's eager kernels (seconds on CPU); one test below
# takes torch.compile's default, inductor, end to end.
CB = "inductor" if torch.cuda.is_available() else "aot_eager"


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def twin(torch_cls, device, **kw):
    torch.manual_seed(0)
    ref = torch_cls(I, H, **kw).to(device)
    fast = fastcells.convert(torch_cls(I, H, **kw).to(device))
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def assert_compiled_matches(fast, ref, x):
    """fast compiled with fullgraph=True gives torch.nn's eager outputs and gradients."""
    out = flat(torch.compile(fast, backend=CB, fullgraph=True)(x))
    want = flat(ref(x))
    for a, b in zip(out, want):
        assert_close(a, b, F32)
    for a, b in zip(grads(loss_of(out), [x, *fast.parameters()]),
                    grads(loss_of(want), [x, *ref.parameters()])):
        assert_close(a, b, F32)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("cls", [nn.LSTMCell, nn.GRUCell])
def test_fullgraph_cell(cls, route, device, monkeypatch):
    with user_route(route, monkeypatch) as kw:
        torch.manual_seed(0)
        ref = cls(I, H).to(device)
        fast = fastcells.modules.TWINS[cls](I, H, **kw).to(device)
        fast.load_state_dict(ref.state_dict())
        x = torch.randn(B, I, device=device, requires_grad=True)
        assert_compiled_matches(fast, ref, x)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("cls", [nn.GRU, nn.LSTM])
def test_fullgraph_batch_first_layer_backward(cls, route, device, monkeypatch):
    """A batch_first input is a transposed view: the compiled backward's gradients must have
    the strides the op's fake promised."""
    with user_route(route, monkeypatch) as kw:
        ref, fast = twin(cls, device, batch_first=True, num_layers=2)
        if kw:
            fast.backend = kw["backend"]
        x = torch.randn(B, T, I, device=device, requires_grad=True)
        assert_compiled_matches(fast, ref, x)


class LM(nn.Module):
    """Embedding, a 2-layer LSTM with dropout between the layers, a decoder."""

    def __init__(self, rnn_cls=nn.LSTM):
        super().__init__()
        self.emb = nn.Embedding(V, I)
        self.rnn = rnn_cls(I, H, num_layers=2, dropout=0.3)
        self.out = nn.Linear(H, V)

    def forward(self, tokens):
        return self.out(self.rnn(self.emb(tokens))[0])


def _train(model, forward, clip, steps=3, seed=1):
    """Losses, clipped norms and final parameters of ``steps`` SGD steps."""
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    record = []
    for _ in range(steps):
        tokens = torch.randint(0, V, (T, B), device=device)
        target = torch.randint(0, V, (T, B), device=device)
        loss = forward(model, tokens, target)
        loss.backward()
        norm = clip(model)
        opt.step()
        opt.zero_grad()
        record += [loss.detach(), norm.detach()]
    return record, [p.detach().clone() for p in model.parameters()]


def _loss(model, tokens, target):
    return nn.functional.cross_entropy(model(tokens).flatten(0, 1), target.flatten())


def _fast_clip(model):
    return fastcells.clip_grad_norm_(model.parameters(), 0.5)


def _torch_clip(model):
    return torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)


def _lm_pair(device):
    torch.manual_seed(0)
    ref = LM().to(device)
    fast = fastcells.convert(LM().to(device))
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _assert_same_training(got, want):
    for a, b in zip(got[0], want[0]):
        assert_close(a, b, F32)
    for a, b in zip(got[1], want[1]):
        assert_close(a, b, F32)


@pytest.mark.parametrize("route", ROUTES)
def test_compiled_training_step(route, device, monkeypatch):
    """Embedding + LSTM + Linear with fastcells.clip_grad_norm_: the forward and loss compiled
    with fullgraph=True, the clip compiled with fullgraph=True, no graph break, the same losses,
    norms and parameters as torch.nn's model trained eagerly (dropout masks included)."""
    with user_route(route, monkeypatch) as kw:
        ref, fast = _lm_pair(device)
        if kw:
            fast.rnn.backend = kw["backend"]
        want = _train(ref, _loss, _torch_clip)
        got = _train(fast, torch.compile(_loss, backend=CB, fullgraph=True),
                     torch.compile(_fast_clip, backend=CB, fullgraph=True))
        _assert_same_training(got, want)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU: the default route's inductor build")
def test_compiled_training_step_inductor_default(device, monkeypatch):
    """torch.compile's own default (inductor) on the default backend, as a CPU user writes it;
    inductor's RNG is torch's when fallback_random is set, so dropout masks match eager."""
    import torch._inductor.config as inductor_config
    monkeypatch.delenv("FASTCELLS_BACKEND", raising=False)
    ref, fast = _lm_pair(device)
    want = _train(ref, _loss, _torch_clip, steps=2)
    with inductor_config.patch(fallback_random=True):
        got = _train(fast, torch.compile(_loss, fullgraph=True),
                     torch.compile(_fast_clip, fullgraph=True), steps=2)
    _assert_same_training(got, want)


@pytest.mark.parametrize("how", ["kw", "env", "use_backend"])
def test_native_compiles_exactly_as_torch_nn(how, device, monkeypatch):
    """On the native backend a fastcells module is torch's: Dynamo graph-breaks at it (an error
    under fullgraph=True, with torch's message), and the model runs as torch.nn's compiled."""
    monkeypatch.delenv("FASTCELLS_BACKEND", raising=False)
    ref, fast = twin(nn.LSTM, device)
    if how == "kw":
        fast.backend = "native"
    elif how == "env":
        monkeypatch.setenv("FASTCELLS_BACKEND", "native")
    x = torch.randn(T, B, I, device=device)

    def outcome(m):
        torch._dynamo.reset()
        try:
            torch.compile(m, backend=CB, fullgraph=True)(x)
        except Exception as e:  # noqa: BLE001  (compared with torch's, whatever it is)
            return type(e), str(e).split("\n")[0]
        return "ok"

    ctx = fastcells.use_backend("native") if how == "use_backend" else contextlib.nullcontext()
    with ctx:
        got = outcome(fast)
        want = outcome(ref)
        assert got == want and want != "ok"
        torch._dynamo.reset()
        for a, b in zip(flat(torch.compile(fast, backend=CB)(x)), flat(ref(x))):
            assert_close(a, b, F32)


def test_convert_keeps_a_model_compiling(device, monkeypatch):
    """A model that compiles with torch.nn's LSTM inside (graph-breaking at it) compiles after
    fastcells.convert, now as one graph."""
    monkeypatch.delenv("FASTCELLS_BACKEND", raising=False)
    ref, fast = _lm_pair(device)
    ref.eval(), fast.eval()
    tokens = torch.randint(0, V, (T, B), device=device)
    want = torch.compile(ref, backend=CB)(tokens)
    torch._dynamo.reset()
    assert torch._dynamo.explain(fast)(tokens).graph_break_count == 0
    torch._dynamo.reset()
    assert_close(torch.compile(fast, backend=CB, fullgraph=True)(tokens), want, F32)


@pytest.mark.parametrize("route", ["default", "env-triton", "kw-reference"])
def test_weight_drop_compiled_across_lengths(route, device, monkeypatch):
    """AWD-LSTM's weight drop: W_hh reassigned from a dropped raw weight in the compiled
    function, then a new sequence length; the same as the eager call, step for step."""
    with user_route(route, monkeypatch) as kw:
        def make():
            torch.manual_seed(0)
            lstm = fastcells.LSTM(I, H, **kw).to(device)
            w = lstm.weight_hh_l0
            del lstm._parameters["weight_hh_l0"]
            lstm.weight_hh_l0_raw = nn.Parameter(w.detach().clone())
            return lstm

        def step(lstm, x, h):
            lstm.weight_hh_l0 = nn.functional.dropout(lstm.weight_hh_l0_raw, 0.5)
            return lstm(x, h)[0].pow(2).sum()

        eager, compiled = make(), make()
        cstep = torch.compile(step, backend=CB)
        h = (torch.zeros(1, B, H, device=device), torch.zeros(1, B, H, device=device))
        for steps in (5, 7):
            x = torch.randn(steps, B, I, device=device)
            seed = torch.seed()
            torch.manual_seed(seed)
            want = step(eager, x, h)
            want.backward()
            torch.manual_seed(seed)
            got = cstep(compiled, x, h)
            got.backward()
            assert_close(got, want, F32)
            assert_close(compiled.weight_hh_l0_raw.grad, eager.weight_hh_l0_raw.grad, F32)


@pytest.mark.parametrize("route", ROUTES)
def test_export_strict(route, device, monkeypatch):
    """torch.export.export(strict=True), the exported program run on new data."""
    with user_route(route, monkeypatch) as kw:
        ref, fast = twin(nn.GRU, device, num_layers=2)
        if kw:
            fast.backend = kw["backend"]
        x = torch.randn(T, B, I, device=device)
        program = torch.export.export(fast, (x,), strict=True)
        x2 = torch.randn(T, B, I, device=device)
        for a, b in zip(flat(program.module()(x2)), flat(ref(x2))):
            assert_close(a, b, F32)


def test_seq2seq_has_no_graph_break(device, monkeypatch):
    """An encoder GRU and a decoder GRUCell loop: one graph with fastcells (torch.nn's model
    graph-breaks at its GRU)."""
    monkeypatch.delenv("FASTCELLS_BACKEND", raising=False)

    class Seq2Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.GRU(I, H)
            self.dec = nn.GRUCell(I, H)
            self.out = nn.Linear(H, I)

        def forward(self, src):
            _, h = self.enc(src)
            h, x, outs = h[0], src[-1], []
            for _ in range(3):
                h = self.dec(x, h)
                x = self.out(h)
                outs.append(x)
            return torch.stack(outs)

    torch.manual_seed(0)
    ref = Seq2Seq().to(device)
    fast = fastcells.convert(Seq2Seq().to(device))
    fast.load_state_dict(ref.state_dict())
    src = torch.randn(T, B, I, device=device)
    explained = torch._dynamo.explain(fast)(src)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)
    torch._dynamo.reset()
    assert_close(torch.compile(fast, backend=CB, fullgraph=True)(src), ref(src), F32)


def test_use_backend_change_retraces(device, monkeypatch):
    """A compiled module follows use_backend: the backend in force is part of the guards."""
    monkeypatch.delenv("FASTCELLS_BACKEND", raising=False)
    ref, fast = twin(nn.GRU, device)
    compiled = torch.compile(fast, backend=CB, fullgraph=True)
    x = torch.randn(T, B, I, device=device)
    seen = []
    real_layer = fastcells.reference.layer

    def spy(*args, **kwargs):
        seen.append("reference")
        return real_layer(*args, **kwargs)

    monkeypatch.setattr(fastcells.reference, "layer", spy)
    with fastcells.use_backend("reference"):
        assert_close(compiled(x)[0], ref(x)[0], F32)
    assert seen == ["reference"]
    with fastcells.use_backend("triton"):
        assert_close(compiled(x)[0], ref(x)[0], F32)
    assert seen == ["reference"]   # retraced onto the kernels' op, not the reference math


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU: the default's compiled route")
@pytest.mark.parametrize("cls", [nn.GRU, nn.LSTM, nn.RNN])
def test_default_cpu_compile_runs_torch_kernels_as_one_op(cls, monkeypatch):
    """On CPU the default backend compiles torch's own kernels as one opaque op (no graph
    break), bidirectional, two layers with dropout: outputs, gradients and dropout masks are
    torch.nn's eager call's."""
    monkeypatch.delenv("FASTCELLS_BACKEND", raising=False)
    ref, fast = twin(cls, "cpu", num_layers=2, bidirectional=True, dropout=0.4)
    ops = []

    def recording(gm, example_inputs):
        ops.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    compiled = torch.compile(fast, backend=recording, fullgraph=True)
    x = torch.randn(T, B, I, requires_grad=True)
    torch.manual_seed(3)
    got = flat(compiled(x))
    torch.manual_seed(3)
    want = flat(ref(x))
    assert any("native_rnn" in op for op in ops)
    for a, b in zip(got, want):
        assert_close(a, b, F32)
    for a, b in zip(grads(loss_of(got), [x, *fast.parameters()]),
                    grads(loss_of(want), [x, *ref.parameters()])):
        assert_close(a, b, F32)
