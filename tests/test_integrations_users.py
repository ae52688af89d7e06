"""torch's other integrations as users call them: torch.jit.script, torch.jit.trace, torch.fx,
torch.func (grad, vmap, jacrev, jvp, jacfwd), DistributedDataParallel and fastcells.convert, on
every way a user picks the backend (tests/user_routes.py: no keyword, FASTCELLS_BACKEND=triton,
use_backend, backend=), and bad input on the eager, scripted and compiled paths.  torch.nn's own
module with the same weights, doing the same thing, is the oracle; where it raises, fastcells
raises the same exception with the same message."""
import copy
import re
import warnings
from typing import Optional, Tuple

import pytest
import torch
import torch._dynamo
from torch import nn
from torch.func import functional_call, grad, jacfwd, jacrev, jvp, vmap

import fastcells
from fastcells.backend import resolve
from rnn_utils import CELLS, KINDS, flat, grads, loss_of
from tolerances import TOL, assert_close, fp32_overrides
from user_routes import ROUTES, user_route

T, B, I, H = 4, 3, 3, 5
F64, F32 = torch.float64, torch.float32
TOL64 = TOL[F64]
CB = "inductor" if torch.cuda.is_available() else "aot_eager"
TABLE = {**KINDS, **{k + "_cell": v for k, v in CELLS.items()}}


def is_cell(name):
    return name.endswith("_cell")


def pair(name, kw, device, dtype=F64):
    """(torch.nn module, fastcells module) with the same weights; ``kw`` is the route's."""
    torch_cls, fast_cls, extra = TABLE[name]
    torch.manual_seed(0)
    ref = torch_cls(I, H, **extra).to(device=device, dtype=dtype)
    fast = fast_cls(I, H, **extra, **kw).to(device=device, dtype=dtype)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def make_x(name, device, steps=T, batch=B, dtype=F64, seed=2):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, I) if is_cell(name) else (steps, batch, I)
    return torch.randn(shape, generator=g, dtype=dtype).to(device)


def assert_all_close(got, want, dtype=F64, **overrides):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        if dtype == F64:
            torch.testing.assert_close(a, b, **TOL64)
        else:
            assert_close(a, b, dtype, **overrides)


def no_cudnn():
    """torch's oracle under torch.func and double backward: cuDNN's RNNs refuse them."""
    return torch.backends.cudnn.flags(enabled=False)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# ------------------------------------------------------------------------ torch.jit.script
class CallTensor(nn.Module):
    """torch scripts a bare nn.LSTM/GRU/RNN without a forward (torch's is overloaded): users
    script the model that calls it."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor, hx: Optional[torch.Tensor] = None):
        return self.m(x, hx)


class CallPair(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor, hx: Optional[Tuple[torch.Tensor, torch.Tensor]] = None):
        return self.m(x, hx)


def caller(name, m):
    return CallPair(m) if name.startswith("lstm") else CallTensor(m)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("name", ["lstm", "gru", "rnn_relu_cell"])
def test_script_is_torchs_module_on_the_same_parameters(name, route, device, monkeypatch):
    """The scripted module is torch's own, holding the fastcells module's very Parameters: its
    outputs and gradients are torch.nn's, and the gradients land on the fastcells module."""
    with user_route(route, monkeypatch) as kw:
        ref, fast = pair(name, kw, device)
        scripted = torch.jit.script(caller(name, fast))
        assert scripted.m.original_name == type(ref).__name__
        assert [p.data_ptr() for p in scripted.parameters()] == \
            [p.data_ptr() for p in fast.parameters()]
        x = make_x(name, device).requires_grad_()
        got, want = flat(scripted(x)), flat(ref(x))
        assert_all_close(got, want)
        assert_all_close(grads(loss_of(got), [x, *fast.parameters()]),
                         grads(loss_of(want), [x, *ref.parameters()]))
        loss_of(flat(scripted(x))).backward()
        loss_of(flat(ref(x))).backward()
        assert_all_close([p.grad for p in fast.parameters()], [p.grad for p in ref.parameters()])


# ------------------------------------------------------------------------- torch.jit.trace
def _traced(m, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # torch's deprecation and TracerWarnings (torch.nn's too)
        return torch.jit.trace(m, (x,), check_trace=False)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("name", ["lstm", "gru_cell"])
def test_trace_replays_on_new_data(name, route, device, monkeypatch):
    """A trace replays on new data of the traced shape and on a new batch size, forward and
    backward, as torch.nn's trace does."""
    with user_route(route, monkeypatch) as kw:
        ref, fast = pair(name, kw, device)
        traced, traced_ref = _traced(fast, make_x(name, device)), _traced(ref, make_x(name, device))
        for x in (make_x(name, device, seed=5), make_x(name, device, batch=2, seed=6)):
            x.requires_grad_()
            got, want = flat(traced(x)), flat(traced_ref(x))
            assert_all_close(got, flat(ref(x)))
            assert_all_close(got, want)
            assert_all_close(grads(loss_of(got), [x, *fast.parameters()]),
                             grads(loss_of(want), [x, *ref.parameters()]))


# Not here: the reference routes (a trace records the reference math's Python time loop
# unrolled for the traced length: a longer input runs the traced steps only, a shorter one
# raises), and a trace taken at T=1 on the kernels (its h_n replays as (1, T, B, H)).
@pytest.mark.parametrize("route", ["default", "env-triton", "kw-triton"])
@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_trace_replays_on_a_new_length(name, route, device, monkeypatch):
    """Traced at T=4, replayed at T=2: torch.nn's trace runs the new length."""
    with user_route(route, monkeypatch) as kw:
        ref, fast = pair(name, kw, device)
        traced, traced_ref = _traced(fast, make_x(name, device)), _traced(ref, make_x(name, device))
        x = make_x(name, device, steps=2, seed=7).requires_grad_()
        got, want = flat(traced(x)), flat(traced_ref(x))
        assert_all_close(got, want)
        assert_all_close(grads(loss_of(got), [x, *fast.parameters()]),
                         grads(loss_of(want), [x, *ref.parameters()]))


# --------------------------------------------------------------------------------- torch.fx
class Model(nn.Module):
    """A layer, a cell on its last output, a head: the user's model around fastcells."""

    def __init__(self, layer=nn.LSTM, cell=nn.GRUCell, **kw):
        super().__init__()
        self.rnn = layer(I, H, **kw)
        self.cell = cell(H, H, **kw)
        self.head = nn.Linear(H, 2)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.head(self.cell(y[-1]))


def model_pair(route_kw, device, dtype=F64):
    """(torch.nn model, the same model with fastcells modules built on the route)."""
    torch.manual_seed(0)
    ref = Model().to(device=device, dtype=dtype)
    fast = Model(fastcells.LSTM, fastcells.GRUCell, **route_kw).to(device=device, dtype=dtype)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


@pytest.mark.parametrize("route", ROUTES)
def test_fx_keeps_fastcells_modules_as_leaves(route, device, monkeypatch):
    with user_route(route, monkeypatch) as kw:
        ref, fast = model_pair(kw, device)
        gm = torch.fx.symbolic_trace(fast)
        leaves = [n.target for n in gm.graph.nodes if n.op == "call_module"]
        assert leaves == ["rnn", "cell", "head"]
        assert gm.get_submodule("rnn") is fast.rnn and gm.get_submodule("cell") is fast.cell
        x = make_x("lstm", device).requires_grad_()
        got, want = gm(x), ref(x)
        assert_all_close([got], [want])
        assert_all_close(grads(loss_of([got]), [x, *gm.parameters()]),
                         grads(loss_of([want]), [x, *ref.parameters()]))


# ------------------------------------------------------------------------------- torch.func
def _out(m):
    return lambda *a: flat(m(*a))[0]


def _outcome(fn, cudnn=True):
    """('ok', tensors) or (exception type, message); ``cudnn=False`` for torch's oracle."""
    try:
        with torch.backends.cudnn.flags(enabled=cudnn and torch.backends.cudnn.enabled):
            res = fn()
    except Exception as e:  # noqa: BLE001  (compared with torch.nn's, whatever it is)
        return type(e), str(e)
    return "ok", flat(list(res.values()) if isinstance(res, dict) else res)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("name", ["lstm", "gru_cell"])
def test_func_transforms(name, route, device, monkeypatch):
    """grad over the parameters (functional_call), jacrev, jvp and jacfwd with respect to the
    input, each against the same transform of torch.nn's module."""
    with user_route(route, monkeypatch) as kw:
        ref, fast = pair(name, kw, device)
        x = make_x(name, device, steps=3, batch=2)
        v = make_x(name, device, steps=3, batch=2, seed=9)
        transforms = {
            "grad": lambda m: grad(lambda p: loss_of(flat(functional_call(m, p, (x,)))))(
                dict(m.named_parameters())),
            "jacrev": lambda m: jacrev(_out(m))(x),
            "jvp": lambda m: jvp(_out(m), (x,), (v,)),
            "jacfwd": lambda m: jacfwd(_out(m))(x),
        }
        for what, f in transforms.items():
            got, want = _outcome(lambda: f(fast)), _outcome(lambda: f(ref), cudnn=False)
            assert got[0] == want[0] == "ok", (what, got, want)
            assert_all_close(got[1], want[1])


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("name", ["lstm", "gru_cell"])
def test_vmap_over_a_batch_of_inputs(name, route, device, monkeypatch):
    """vmap over a leading dimension of inputs.  torch.nn's layers have no batching rule
    (aten::lstm): where fastcells runs torch's own forward (native) it raises torch's error,
    and on its kernels and reference math it gives what torch.nn gives for each input alone."""
    with user_route(route, monkeypatch) as kw:
        ref, fast = pair(name, kw, device)
        xs = torch.stack([make_x(name, device, seed=s) for s in (3, 4)])
        got = _outcome(lambda: vmap(_out(fast))(xs))
        want = _outcome(lambda: vmap(_out(ref))(xs), cudnn=False)
        native = resolve(fast.backend, xs) == "native"
        if want[0] != "ok" and not native:
            with no_cudnn():
                want = "ok", [torch.stack([_out(ref)(x) for x in xs])]
        assert got[0] == want[0], (got, want)
        if want[0] == "ok":
            assert_all_close(got[1], want[1])
        else:
            assert got[1] == want[1]


# ---------------------------------------------------------------------------------------- DDP
@pytest.fixture(scope="module")
def process_group(tmp_path_factory):
    """A one-process group (world_size=1): gloo on CPU, NCCL on CUDA."""
    import torch.distributed as dist
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    if dist.is_initialized():
        yield dist
        return
    backend = "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
    if backend == "gloo" and not dist.is_gloo_available():
        pytest.skip("gloo is not available")
    store = tmp_path_factory.mktemp("ddp") / "store"
    dist.init_process_group(backend, init_method=f"file://{store}", rank=0, world_size=1)
    try:
        yield dist
    finally:
        dist.destroy_process_group()


def _step(model, x, target):
    """One SGD step: the loss, the gradients, the parameters after the step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = nn.functional.mse_loss(model(x), target)
    loss.backward()
    gs = [p.grad.clone() for p in model.parameters()]
    opt.step()
    return loss.detach(), gs, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("route", ROUTES)
def test_ddp_training_step(route, device, process_group, monkeypatch):
    """A DistributedDataParallel training step of a model with fastcells modules: the loss,
    gradients and updated parameters of the plain fastcells model and of torch.nn's."""
    with user_route(route, monkeypatch) as kw:
        ref, fast = model_pair(kw, device)
        plain = copy.deepcopy(fast)
        ddp = nn.parallel.DistributedDataParallel(fast)
        x = make_x("lstm", device)
        target = torch.randn(B, 2, dtype=F64, device=device)
        got = _step(ddp, x, target)
        for want in (_step(plain, x, target), _step(ref, x, target)):
            assert_all_close([got[0]], [want[0]])
            assert_all_close(got[1], want[1])
            assert_all_close(got[2], want[2])


# ---------------------------------------------------------------------------- fastcells.convert
def converted_pair(kw, device, dtype=F64):
    """(torch.nn model, fastcells.convert of a copy); the route's backend= goes to convert."""
    torch.manual_seed(0)
    ref = Model().to(device=device, dtype=dtype)
    fast = fastcells.convert(copy.deepcopy(ref), **kw)
    assert type(fast.rnn) is fastcells.LSTM and type(fast.cell) is fastcells.GRUCell
    assert fast.rnn.backend == kw.get("backend")
    return ref, fast


@pytest.mark.parametrize("route", ROUTES)
def test_convert_then_eager(route, device, monkeypatch):
    with user_route(route, monkeypatch) as kw:
        ref, fast = converted_pair(kw, device)
        x = make_x("lstm", device).requires_grad_()
        got, want = fast(x), ref(x)
        assert_all_close([got], [want])
        assert_all_close(grads(loss_of([got]), [x, *fast.parameters()]),
                         grads(loss_of([want]), [x, *ref.parameters()]))


@pytest.mark.parametrize("route", ROUTES)
def test_convert_then_compile(route, device, monkeypatch):
    """fastcells.convert, then torch.compile(fullgraph=True): torch.nn's eager results in
    float32, forward and backward."""
    with user_route(route, monkeypatch) as kw:
        ref, fast = converted_pair(kw, device, dtype=F32)
        x = make_x("lstm", device, dtype=F32).requires_grad_()
        got, want = torch.compile(fast, backend=CB, fullgraph=True)(x), ref(x)
        over = fp32_overrides(F32, device)
        assert_all_close([got], [want], F32, **over)
        assert_all_close(grads(loss_of([got]), [x, *fast.parameters()]),
                         grads(loss_of([want]), [x, *ref.parameters()]), F32, **over)


@pytest.mark.parametrize("route", ROUTES)
def test_convert_then_script(route, device, monkeypatch):
    with user_route(route, monkeypatch) as kw:
        ref, fast = converted_pair(kw, device)
        params = list(fast.parameters())
        scripted = torch.jit.script(fast)
        assert [p.data_ptr() for p in scripted.parameters()] == [p.data_ptr() for p in params]
        x = make_x("lstm", device).requires_grad_()
        got, want = scripted(x), ref(x)
        assert_all_close([got], [want])
        assert_all_close(grads(loss_of([got]), [x, *params]),
                         grads(loss_of([want]), [x, *ref.parameters()]))


# -------------------------------------------------------------------------------- bad input
def bad_inputs(name, device):
    """(input, hx) pairs torch refuses: a wrong feature size, a state of another batch size,
    a 4-D input."""
    def state(batch):
        shape = (batch, H) if is_cell(name) else (1, batch, H)
        h = torch.zeros(shape, dtype=F64, device=device)
        return (h, h.clone()) if name.startswith("lstm") else h
    x = make_x(name, device)
    wide = torch.cat([x, x[..., :1]], dim=-1)
    return {"input-size": (wide, state(B)), "hx-batch": (x, state(B - 1)),
            "4-D": (x.unsqueeze(0).expand(2, *x.shape).contiguous(), None)}


def _raised(fn):
    with pytest.raises(Exception) as info:
        fn()
    return info.value


def _dynamo_text(e):
    """Dynamo's report of an error, less its 'from user code' stack (the files differ)."""
    return re.sub(r" at 0x[0-9a-f]+", "", str(e).split("\nfrom user code:")[0])


def _snapshot(m):
    return [t.detach().clone() for p in m.parameters() for t in (p, p.grad)]


def assert_same_compiled_error(got, want, want_eager):
    """fastcells' error under torch.compile against torch.nn's: the same type and Dynamo
    report, or, where fastcells' own checks run before any op (its cells on the kernels), torch's
    eager error itself, which torch.nn's compiled cell raises wrapped in Dynamo's
    TorchRuntimeError (its ATen op refused the fake tensors)."""
    if type(got) is type(want):
        assert _dynamo_text(got) == _dynamo_text(want)
        return
    assert isinstance(want, torch._dynamo.exc.TorchRuntimeError), (got, want)
    assert type(got) is type(want_eager) and str(got) == str(want_eager)
    assert f"got {want_eager!r}" in str(want)


@pytest.mark.parametrize("path", ["eager", "script", "compile"])
@pytest.mark.parametrize("route", ["default", "env-triton"])
@pytest.mark.parametrize("name", ["lstm", "gru_cell"])
def test_bad_input_raises_as_torch(name, route, path, device, monkeypatch):
    """torch.nn's exception type and message on the same path, and the model's parameters and
    existing gradients unchanged."""
    with user_route(route, monkeypatch) as kw:
        ref, fast = pair(name, kw, device)
        for p in fast.parameters():
            p.grad = torch.randn_like(p)
        before = _snapshot(fast)
        if path == "script":
            scripted, scripted_ref = (torch.jit.script(caller(name, m)) for m in (fast, ref))
        for case, (x, hx) in bad_inputs(name, device).items():
            want_eager = _raised(lambda: ref(x, hx))
            if path == "eager":
                got, want = _raised(lambda: fast(x, hx)), want_eager
            elif path == "script":
                got, want = _raised(lambda: scripted(x, hx)), _raised(lambda: scripted_ref(x, hx))
            else:
                torch._dynamo.reset()
                got = _raised(lambda: torch.compile(fast, backend=CB)(x, hx))
                torch._dynamo.reset()
                want = _raised(lambda: torch.compile(ref, backend=CB)(x, hx))
            if path == "compile":
                assert_same_compiled_error(got, want, want_eager)
            else:
                assert type(got) is type(want), (case, got, want)
                assert str(got) == str(want), case
            after = _snapshot(fast)
            assert all(torch.equal(a, b) for a, b in zip(after, before)), case
