"""What a new user does with torch.nn's recurrent modules, done to fastcells':
torch's own module with the same weights is the oracle, on the triton (interpreter on CPU) and
reference backends."""
import copy
import pickle
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import fastcells
from rnn_utils import CELLS, KINDS, flat, grads, loss_of, twins
from tolerances import TOL

T, B, I, H = 3, 2, 3, 5
BACKENDS = ["triton", "reference"]
TOL64 = TOL[torch.float64]  # parity with torch in float64 (tests/tolerances.py)
ALL = {**{k: KINDS[k] for k in KINDS}, **{k + "_cell": CELLS[k] for k in CELLS}}
TABLES = {**{k: (KINDS, k) for k in KINDS}, **{k + "_cell": (CELLS, k) for k in CELLS}}


def pair(name, backend, device, dtype=torch.float64, **kw):
    table, kind = TABLES[name]
    return twins(table, kind, I, H, backend=backend, dtype=dtype, device=device, **kw)


def is_cell(name):
    return name.endswith("_cell")


def make_x(name, device, batch=B, steps=T, dtype=torch.float64):
    shape = (batch, I) if is_cell(name) else (steps, batch, I)
    return torch.randn(shape, dtype=dtype, device=device)


def state(name, batch=B, dtype=torch.float64, device="cpu"):
    shape = (batch, H) if is_cell(name) else (1, batch, H)
    h = torch.randn(shape, dtype=dtype, device=device) if dtype.is_floating_point else \
        torch.ones(shape, dtype=dtype, device=device)
    return (h, h.clone()) if name.startswith("lstm") else h


def outcome(fn):
    """('ok', outputs) or (exception type, message)."""
    try:
        return "ok", flat(fn())
    except Exception as e:  # noqa: BLE001  (compared with torch's, whatever it is)
        return type(e), str(e)


def assert_same_outcome(got, want):
    assert got[0] == want[0], (got, want)
    if want[0] == "ok":
        for a, b in zip(got[1], want[1]):
            torch.testing.assert_close(a, b, **TOL64)
    else:
        assert got[1] == want[1]


def assert_same_run(ref, fast, x, hx=None):
    """Outputs and every gradient (input, states, parameters) of ``fast`` match ``ref``."""
    xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    hxs = [None, None] if hx is None else [
        tuple(h.clone().requires_grad_() for h in hx) if isinstance(hx, tuple)
        else hx.clone().requires_grad_() for _ in range(2)]
    outs = [flat(m(v, h)) for m, v, h in zip((ref, fast), xs, hxs)]
    for a, b in zip(outs[1], outs[0]):
        torch.testing.assert_close(a, b, **TOL64)
    leaves = [[v] + list(flat(h) if h is not None else []) + list(m.parameters())
              for m, v, h in zip((ref, fast), xs, hxs)]
    g = [grads(loss_of(o), leaf) for o, leaf in zip(outs, leaves)]
    for a, b in zip(g[1], g[0]):
        torch.testing.assert_close(a, b, **TOL64)


# ------------------------------------------------------------------- 1. zero-size batches
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(ALL))
def test_zero_size_batch_forward_and_backward(name, backend, device):
    ref, fast = pair(name, backend, device)
    assert_same_run(ref, fast, make_x(name, device, batch=0))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(ALL))
def test_one_step_and_unbatched(name, backend, device):
    ref, fast = pair(name, backend, device)
    assert_same_run(ref, fast, make_x(name, device, steps=1), state(name, device=device))
    x = make_x(name, device)[..., 0, :] if not is_cell(name) else make_x(name, device)[0]
    assert_same_run(ref, fast, x)


# ------------------------------------------------------- 2. states of the wrong dtype
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("hx_dtype", [torch.float32, torch.int64], ids=["fp32-hx", "int64-hx"])
@pytest.mark.parametrize("name", list(ALL))
def test_state_of_another_dtype_raises_as_torch(name, hx_dtype, backend, device):
    ref, fast = pair(name, backend, device)
    x, hx = make_x(name, device), state(name, dtype=hx_dtype, device=device)
    want = outcome(lambda: ref(x, hx))
    assert want[0] is RuntimeError  # torch refuses it (mat1 and mat2 must have the same dtype)
    assert_same_outcome(outcome(lambda: fast(x, hx)), want)
    if name.startswith("lstm"):  # only c of another dtype
        h, c = state(name, device=device)
        hx = (h, c.to(hx_dtype))
        assert_same_outcome(outcome(lambda: fast(x, hx)), outcome(lambda: ref(x, hx)))


# ------------------------------------------------------------- 3. LSTM states not a pair
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("count", [1, 3])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("name", ["lstm", "lstm_cell"])
def test_lstm_state_count_as_torch(name, batched, count, backend, device):
    """torch: 'lstm expects two hidden states' (RuntimeError) for batched input; unbatched
    input keeps the first two states (3) or fails indexing (1).  fastcells does the same."""
    ref, fast = pair(name, backend, device)
    x, (h, c) = make_x(name, device), state(name, device=device)
    if not batched:
        x, h, c = x[..., 0, :] if not is_cell(name) else x[0], h[..., 0, :], c[..., 0, :]
    hx = (h, c, c)[:count]
    want = outcome(lambda: ref(x, hx))
    if batched and (count == 3 or is_cell(name)):
        assert want[0] is RuntimeError and "expects two hidden states" in want[1]
    assert_same_outcome(outcome(lambda: fast(x, hx)), want)


# --------------------------------------------------------------------------- 4. TorchScript
class Model(nn.Module):
    """A model around every kind of module."""

    def __init__(self, backend=None):
        super().__init__()
        self.lstm = fastcells.LSTM(I, H, num_layers=2, backend=backend)
        self.gru = fastcells.GRU(H, H, batch_first=False, backend=backend)
        self.cell = fastcells.RNNCell(H, H, nonlinearity="relu", backend=backend)

    def forward(self, x):
        y, (h, c) = self.lstm(x)
        y, h2 = self.gru(y)
        return self.cell(y[-1], h2[0]) + c.sum(0)


def torch_model(model):
    """The same model on torch's own modules, same Parameters."""
    ref = copy.deepcopy(model)
    for n in ("lstm", "gru", "cell"):
        m = getattr(ref, n)
        setattr(ref, n, fastcells.modules.twin(m, m._torch_class()))
    return ref


class Call(nn.Module):
    """torch scripts a bare nn.LSTM/GRU/RNN without a forward (its forward is overloaded): it is
    scripted as a submodule, called from another module's forward."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x)


@pytest.mark.parametrize("name", list(ALL))
def test_script_runs_torchs_module_on_the_same_parameters(name, device):
    ref, fast = pair(name, "triton", device)
    assert hasattr(torch.jit.script(fast), "forward") == hasattr(torch.jit.script(ref), "forward")
    scripted = torch.jit.script(Call(fast))
    x = make_x(name, device)
    for a, b in zip(flat(scripted(x)), flat(ref(x))):
        torch.testing.assert_close(a, b, **TOL64)
    assert scripted.m.original_name == type(ref).__name__
    ptrs = [p.data_ptr() for p in fast.parameters()]
    assert [p.data_ptr() for p in scripted.parameters()] == ptrs
    with torch.no_grad():  # the same Parameters: a step on one is seen by the other
        next(fast.parameters()).add_(1.0)
    torch.testing.assert_close(flat(scripted(x))[0], flat(fast(x))[0], **TOL64)


def test_script_a_model(device):
    model = Model(backend="triton").double().to(device)
    ref = torch_model(model)
    x = torch.randn(T, B, I, dtype=torch.float64, device=device)
    want = ref(x)
    scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted(x), want, **TOL64)
    # torch.jit.script puts what __prepare_scriptable__ returns into the model itself (README)
    assert type(model.lstm) is nn.LSTM
    fastcells.convert(model)
    assert type(model.lstm) is fastcells.LSTM
    torch.testing.assert_close(model(x), want, **TOL64)


# ------------------------------------------------------------------------------- 5. fx
def spy_on_kernels(monkeypatch):
    """Count calls into fastcells' ops (not torch's own)."""
    calls = []
    for fn in ("rnn", "rnn_on", "cell_on", "lstm_cell", "gru_cell", "rnn_tanh_cell",
               "rnn_relu_cell"):
        real = getattr(fastcells.functional, fn)
        monkeypatch.setattr(fastcells.functional, fn,
                            lambda *a, _real=real, _fn=fn, **k: calls.append(_fn) or _real(*a, **k))
    return calls


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(ALL))
def test_fx_trace_bare_module_runs_fastcells(name, backend, device, monkeypatch):
    ref, fast = pair(name, backend, device)
    gm = torch.fx.symbolic_trace(fast)
    calls = spy_on_kernels(monkeypatch)
    x, hx = make_x(name, device), state(name, device=device)
    assert_same_run(ref, gm, x, hx)
    assert calls, "the traced module did not run fastcells' ops"
    assert {id(p) for p in gm.parameters()} == {id(p) for p in fast.parameters()}


@pytest.mark.parametrize("backend", BACKENDS)
def test_fx_trace_model_keeps_fastcells_modules_as_leaves(backend, device, monkeypatch):
    model = Model(backend=backend).double().to(device)
    gm = torch.fx.symbolic_trace(model)
    leaves = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    assert leaves == ["lstm", "gru", "cell"]
    assert all(isinstance(gm.get_submodule(t), fastcells.modules._Backend) for t in leaves)
    calls = spy_on_kernels(monkeypatch)
    x = torch.randn(T, B, I, dtype=torch.float64, device=device)
    torch.testing.assert_close(gm(x), torch_model(model)(x), **TOL64)
    assert calls == ["rnn_on", "rnn_on", "cell_on"]


# --------------------------------------------------------------------------- 6. convert
class WeightDrop(nn.Module):
    """AWD-LSTM's weight drop as a parametrization (dropout on the recurrent weights)."""

    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, w):
        return nn.functional.dropout(w, self.p, self.training)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(ALL))
def test_convert_keeps_a_parametrization_working(name, backend, device):
    ref, _ = pair(name, backend, device)
    model = nn.Sequential(copy.deepcopy(ref))
    wname = "weight_hh_l0" if not is_cell(name) else "weight_hh"
    for m in (ref, model[0]):
        parametrize.register_parametrization(m, wname, WeightDrop(0.5))
    original = model[0].parametrizations[wname].original
    fastcells.convert(model, backend=backend)
    new = model[0]
    assert isinstance(new, fastcells.modules._Backend) and parametrize.is_parametrized(new, wname)
    assert new.parametrizations[wname].original is original
    x = make_x(name, device)
    torch.manual_seed(3)
    want = flat(ref(x))
    torch.manual_seed(3)
    got = flat(new(x))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL64)
    loss_of(got).backward()
    assert original.grad is not None  # the gradient reaches the weight behind the dropout
    new.eval(), ref.eval()
    with torch.backends.cudnn.flags(enabled=False):  # torch's oracle: cuDNN has no eval backward
        assert_same_run(ref, new, x)


def test_convert_one_module_used_twice_gives_one_twin():
    shared = nn.GRU(I, H)
    model = nn.ModuleDict({"a": shared, "b": nn.Sequential(shared), "c": nn.ModuleList([shared])})
    fastcells.convert(model)
    assert isinstance(model["a"], fastcells.GRU)
    assert model["a"] is model["b"][0] is model["c"][0]
    assert len(list(model.parameters())) == len(list(shared.parameters()))


def test_convert_twin_has_containers_of_its_own():
    old = nn.LSTM(I, H)
    new = fastcells.convert(old)
    assert [p for p in new.parameters()] == [p for p in old.parameters()]  # same objects
    new.register_buffer("seen", torch.zeros(1))
    new.extra = nn.Parameter(torch.zeros(1))
    assert "seen" not in old.state_dict() and not hasattr(old, "extra")
    assert new._parameters is not old._parameters and new._buffers is not old._buffers
    # hooks registered before conversion still run, and their handles still remove them
    calls = []
    handle = old.register_forward_hook(lambda *a: calls.append(1))
    new = fastcells.convert(old)
    new(torch.randn(T, B, I))
    handle.remove()
    new(torch.randn(T, B, I))
    assert calls == [1]


def test_convert_warns_about_subclasses_it_leaves_alone():
    class MyLSTM(nn.LSTM):
        pass

    model = nn.Sequential(nn.LSTM(I, H), MyLSTM(I, H), fastcells.GRU(I, H))
    with pytest.warns(UserWarning, match=r"left these subclasses.*1 \(.*MyLSTM\)"):
        fastcells.convert(model)
    assert type(model[0]) is fastcells.LSTM and type(model[1]) is MyLSTM
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fastcells.convert(nn.Sequential(nn.LSTM(I, H), fastcells.GRU(I, H)))


# ------------------------------------------------------------------ 7. the README's claims
def test_readme_names_the_clip_deviation():
    import pathlib
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    row = next(line for line in readme.splitlines()
               if line.startswith("| `fastcells.clip_grad_norm_`"))
    assert "inf" in row and "empty" in row, row


# ----------------------------------------------------- more of what people do with nn.LSTM
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["lstm", "gru_cell"])
def test_deepcopy_pickle_state_dict(name, backend, device):
    ref, fast = pair(name, backend, device)
    x = make_x(name, device)
    for other in (copy.deepcopy(fast), pickle.loads(pickle.dumps(fast))):
        assert type(other) is type(fast) and other.backend == backend
        assert_same_run(ref, other, x)
    back = type(ref)(I, H).double().to(device)
    back.load_state_dict(fast.state_dict())
    assert_same_run(ref, back, x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hooks_and_flatten_parameters(backend, device):
    ref, fast = pair("lstm", backend, device, num_layers=2)
    seen = []
    fast.register_forward_pre_hook(lambda m, args: seen.append("pre"))
    fast.register_forward_hook(lambda m, args, out: (out[0] * 2, out[1]))
    ref.register_forward_hook(lambda m, args, out: (out[0] * 2, out[1]))
    fast.flatten_parameters()
    assert_same_run(ref, fast, make_x("lstm", device))
    assert seen == ["pre"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["lstm", "gru", "lstm_cell", "rnn_tanh_cell"])
def test_non_contiguous_and_expanded_inputs(name, backend, device):
    ref, fast = pair(name, backend, device)
    x = make_x(name, device, batch=1).expand(*(
        (T, B, I) if not is_cell(name) else (B, I)))           # stride 0 over the batch
    h = state(name, batch=1, device=device)
    expand = (lambda v: v.expand(1, B, H)) if not is_cell(name) else (lambda v: v.expand(B, H))
    hx = tuple(expand(v) for v in h) if isinstance(h, tuple) else expand(h)
    assert_same_run(ref, fast, x, hx)
    xt = make_x(name, device).transpose(-1, -2).contiguous().transpose(-1, -2)  # column-major
    assert not xt.is_contiguous()
    assert_same_run(ref, fast, xt)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_export(backend, device):
    ref, fast = pair("gru", backend, device)
    x = make_x("gru", device)
    ep = torch.export.export(fast, (x,))
    for a, b in zip(flat(ep.module()(x)), flat(ref(x))):
        torch.testing.assert_close(a, b, **TOL64)


def test_ddp_single_process_gloo(device, tmp_path):
    import torch.distributed as dist
    if device != "cpu" or not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("gloo on CPU")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        ref, fast = pair("lstm", "triton", device)
        ddp = nn.parallel.DistributedDataParallel(fast)
        x = make_x("lstm", device)
        loss_of(flat(ddp(x))).backward()
        loss_of(flat(ref(x))).backward()
        for p, q in zip(fast.parameters(), ref.parameters()):
            torch.testing.assert_close(p.grad, q.grad, **TOL64)
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------- 9. versions and the Dynamo patch
def test_declared_versions_are_the_tested_ones():
    """setup.py's lower bounds are versions the tests have run on (torch 2.11/2.13, triton 3.6)."""
    import pathlib
    import re
    setup = (pathlib.Path(__file__).parents[1] / "setup.py").read_text()
    bounds = dict(re.findall(r'"(torch|triton)>=([0-9.]+)"', setup))
    assert tuple(map(int, bounds["torch"].split("."))) >= (2, 11)
    assert tuple(map(int, bounds["triton"].split("."))) >= (3, 6)


def test_dynamo_patch_is_in_place():
    from torch._dynamo.variables.builder import VariableBuilder
    assert getattr(VariableBuilder.wrap_module, "_fastcells", False)


@pytest.mark.parametrize("moved", ["module", "method", "flag"])
def test_dynamo_patch_that_cannot_apply_warns(moved, monkeypatch):
    import sys
    from torch._dynamo.variables import builder
    from fastcells import _dynamo_support
    if moved == "module":
        monkeypatch.setitem(sys.modules, "torch._dynamo.variables.builder", None)
    elif moved == "method":
        monkeypatch.delattr(builder.VariableBuilder, "wrap_module")
    else:
        monkeypatch.setattr(sys.modules["torch._dynamo"], "config", _NoAllowRnn())
    with pytest.warns(RuntimeWarning, match="cannot let torch.compile trace"):
        assert _dynamo_support.install((fastcells.LSTM,)) is False


class _NoAllowRnn:
    """A Dynamo config without the allow_rnn flag."""


# ------------------------------------------------------------------------------ torch.func
@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_func_grad_and_jacrev(backend, device):
    from torch.func import functional_call, grad, jacrev
    ref, fast = pair("gru", backend, device)
    x = make_x("gru", device)

    def loss(params, m):
        return functional_call(m, params, (x,))[0].pow(2).sum()

    with torch.backends.cudnn.flags(enabled=False):  # torch's oracle: cuDNN refuses torch.func
        g_ref = grad(loss)(dict(ref.named_parameters()), ref)
        j_ref = jacrev(lambda v: ref(v)[0].sum(0))(x)
    g_fast = grad(loss)(dict(fast.named_parameters()), fast)
    for k in g_ref:
        torch.testing.assert_close(g_fast[k], g_ref[k], **TOL64)
    j_fast = jacrev(lambda v: fast(v)[0].sum(0))(x)
    torch.testing.assert_close(j_fast, j_ref, **TOL64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["lstm", "gru_cell"])
def test_jit_trace_replays_on_new_data(name, backend, device):
    """A traced module must compute, not replay constants recorded from the example input."""
    ref, fast = pair(name, backend, device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python values it saw
        traced = torch.jit.trace(fast, (make_x(name, device),))
    x = make_x(name, device)
    for a, b in zip(flat(traced(x)), flat(ref(x))):
        torch.testing.assert_close(a, b, **TOL64)
