"""The clip functions under torch.compile(fullgraph=True): no graph break, the fastcells custom
ops in the graph as opaque nodes, and the same total and clipped gradients as eager (mixed
dtypes, a None grad, non-contiguous grads, error_if_nonfinite).

On CPU: the ``aot_eager`` backend (AOTAutograd's functionalization of the in-place ops, no code
generation), plus one Inductor case when a C++ compiler is present; on CUDA: ``aot_eager`` and
``inductor``."""
import math
import shutil

import pytest
import torch
import torch._dynamo.testing
from tolerances import TOL

import fastcells
from fastcells.kernels import clip_plan as kclip

f64, f32, f16, bf16 = torch.float64, torch.float32, torch.float16, torch.bfloat16
_raw_empty = torch.empty                  # before the NaN-poison fixture patches it
CUDA = torch.cuda.is_available()
HAVE_CXX = CUDA or any(shutil.which(c) for c in ("g++", "clang++", "c++"))
NO_CXX = pytest.mark.skipif(not HAVE_CXX, reason="Inductor on CPU needs a C++ compiler")
# Triton's interpreter converts loop bounds with a numpy deprecation warning (not ours)
pytestmark = [
    pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Every test compiles from scratch (the helpers' code objects are shared across cases)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class Net(torch.nn.Module):
    """Parameters of four dtypes, one of them unused (its grad stays None)."""

    def __init__(self, device):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.a = torch.nn.Linear(5, 7).to(device)                           # float32
        self.b = torch.nn.Linear(7, 3).to(device, f64)                       # float64
        self.h = torch.nn.Parameter(torch.randn(3, generator=gen).to(device, bf16))
        self.s = torch.nn.Parameter(torch.randn(7, generator=gen).to(device, f16))
        self.unused = torch.nn.Parameter(torch.randn(4, generator=gen).to(device))
        with torch.no_grad():
            for p in (*self.a.parameters(), *self.b.parameters()):
                p.copy_(torch.randn(p.shape, generator=gen))

    def forward(self, x):
        y = torch.tanh(self.a(x)) * self.s.float()
        y = self.b(y.double()).float() * self.h.float()
        return y.square().sum() * 3.0


def backward(model, step=0):
    """Fresh gradients from one eager backward pass on step ``step``'s batch."""
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(step)).to(model.a.weight.device)
    model.zero_grad()
    model(x).backward()
    assert model.unused.grad is None
    return model


def make_model(device, step=0):
    return backward(Net(device), step)


def grads(model):
    return [p.grad for p in model.parameters() if p.grad is not None]


def assert_same(a, b, exact=True):
    """Bit-identical (``exact``: the compiled graph runs the very same kernels on the same
    inputs), else within the dtype's tolerance (torch's own ops, which a compiler may
    decompose and reorder)."""
    assert a.dtype == b.dtype and a.device == b.device and a.shape == b.shape
    if exact:
        assert torch.equal(a, b) or (a.isnan().all() and b.isnan().all()), (a, b)
    else:
        torch.testing.assert_close(a, b, **TOL[a.dtype])


def assert_models_match(m1, m2, exact=True):
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert (p.grad is None) == (q.grad is None)
        if p.grad is not None:
            assert p.grad.stride() == q.grad.stride()
            assert_same(p.grad, q.grad, exact)


def compile_counted(fn, backend):
    counter = torch._dynamo.testing.CompileCounterWithBackend(backend)
    return torch.compile(fn, backend=counter, fullgraph=True), counter


# ------------------------------------------------------------------------ parity with eager
@pytest.mark.parametrize("backend,compiler", [
    ("triton", "aot_eager"), ("reference", "aot_eager"), ("native", "aot_eager"),
    pytest.param("triton", "inductor", marks=NO_CXX)])
def test_clip_grad_norm_compiled_matches_eager(backend, compiler, device, monkeypatch):
    """Three training steps on one model (backward eager, the clip compiled): one compilation,
    and each step's total and clipped gradients equal eager's (bit for bit on fastcells' own
    backends)."""
    exact = backend != "native"
    if compiler == "inductor":
        # Inductor's own set-up makes leaf tensors that require grad with torch.empty, which
        # the NaN poison cannot fill in place: spare those
        poisoned = torch.empty
        monkeypatch.setattr(torch, "empty", lambda *a, **k: (
            _raw_empty if k.get("requires_grad") else poisoned)(*a, **k))
    def clip(model):
        return fastcells.clip_grad_norm_(model.parameters(), 0.5, backend=backend)

    compiled, counter = compile_counted(clip, compiler)
    m1, m2 = Net(device), Net(device)
    for step in range(3):
        backward(m1, step), backward(m2, step)
        total = compiled(m1)
        assert_same(total, clip(m2), exact)
        assert_models_match(m1, m2, exact)
        assert total.item() > 0.5                                   # it clips
    assert counter.frame_count == 1
    torch.testing.assert_close(total, torch.nn.utils.get_total_norm(grads(backward(m2, 2))),
                               **TOL[f64])


@pytest.mark.parametrize("norm_type,max_norm", [
    pytest.param(math.inf, 0.1, id="inf-clips"), pytest.param(0.5, 1e5, id="p0.5-no-clip")])
def test_clip_grad_norm_compiled_norm_types(norm_type, max_norm, device):
    """The public function itself compiled, parameters passed as a list."""
    m1, m2 = make_model(device), make_model(device)
    compiled = torch.compile(fastcells.clip_grad_norm_, backend="aot_eager", fullgraph=True)
    total = compiled(list(m1.parameters()), max_norm, norm_type, backend="triton")
    assert_same(total, fastcells.clip_grad_norm_(m2.parameters(), max_norm, norm_type,
                                                 backend="triton"))
    assert (total.item() > max_norm) == (max_norm == 0.1)
    assert_models_match(m1, m2)


@pytest.mark.skipif(not hasattr(torch._dynamo.config, "trace_autograd_ops"),
                    reason="this torch cannot trace backward() inside a compiled function")
def test_backward_and_clip_in_one_compiled_step(device):
    """loss, backward and clip in one fullgraph compiled function."""
    def step(model, x):
        loss = model(x)
        loss.backward()
        return loss.detach(), fastcells.clip_grad_norm_(model.parameters(), 0.5, backend="triton")

    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(3)).to(device)
    m1, m2 = Net(device), Net(device)
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        loss, total = torch.compile(step, backend="aot_eager", fullgraph=True)(m1, x)
    ref_loss, ref_total = step(m2, x)
    torch.testing.assert_close(loss, ref_loss, **TOL[f32])
    torch.testing.assert_close(total, ref_total, **TOL[f64])
    assert total.item() > 0.5
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert (p.grad is None) == (q.grad is None)
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, **TOL[p.dtype])


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("norm_type", [2.0, math.inf, 3.0])
def test_get_total_norm_compiled_matches_eager(norm_type, backend, device):
    gen = torch.Generator().manual_seed(1)
    tensors = [torch.randn(7, 9, generator=gen).to(device),
               torch.randn(9, 7, generator=gen).to(device, f16).t(),          # non-contiguous
               torch.randn(11, generator=gen).to(device, bf16),
               torch.randn(6, 10, generator=gen).to(device, f64)[:, ::2]]   # gappy
    before = [t.clone() for t in tensors]

    def total(ts):
        return fastcells.get_total_norm(ts, norm_type, error_if_nonfinite=True, backend=backend)

    got = torch.compile(total, backend="aot_eager", fullgraph=True)(tensors)
    assert_same(got, total(tensors))
    assert all(torch.equal(t, b) for t, b in zip(tensors, before))      # nothing written
    torch.testing.assert_close(got, torch.nn.utils.get_total_norm(tensors, norm_type), **TOL[bf16])


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("total", [3.7, 0.2, math.inf])
def test_clip_grads_with_norm_compiled_matches_eager(total, backend, device):
    def clip(model, total_norm):
        return fastcells.clip_grads_with_norm_(model.parameters(), 1.5, total_norm, backend=backend)

    m1, m2 = make_model(device), make_model(device)
    t = torch.tensor(total, dtype=f16, device=device)
    assert torch.compile(clip, backend="aot_eager", fullgraph=True)(m1, t) is None
    clip(m2, t)
    assert_models_match(m1, m2)


# ------------------------------------------------------------------------- error_if_nonfinite
@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_error_if_nonfinite_compiled_raises_untouched(bad, backend, device):
    """The flag's host read happens inside an op: no graph break, and when the compiled graph
    runs it raises torch's error with every gradient untouched."""
    model = make_model(device)
    model.s.grad[2] = bad
    before = [g.clone() for g in grads(model)]
    compiled = torch.compile(
        lambda ps: fastcells.clip_grad_norm_(ps, 0.5, error_if_nonfinite=True, backend=backend),
        backend="aot_eager", fullgraph=True)
    ref = make_model(device)
    ref.s.grad[2] = bad
    with pytest.raises(RuntimeError) as theirs:
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5, error_if_nonfinite=True)
    with pytest.raises(RuntimeError) as ours:
        compiled(list(model.parameters()))
    assert str(ours.value) == str(theirs.value)
    for g, b in zip(grads(model), before):
        torch.testing.assert_close(g, b, rtol=0, atol=0, equal_nan=True)
    # finite again: the same compiled function clips
    model.s.grad[2] = 0.0
    ref.s.grad[2] = 0.0
    assert_same(compiled(list(model.parameters())),
                fastcells.clip_grad_norm_(ref.parameters(), 0.5, backend=backend))
    assert_models_match(model, ref)


def test_native_error_if_nonfinite_compiles_with_a_break(device):
    """torch's own clip branches on the total for error_if_nonfinite: a graph break there, as
    documented; without fullgraph it still compiles and raises torch's error."""
    model = make_model(device)
    model.a.weight.grad[0, 0] = math.inf
    compiled = torch.compile(
        lambda ps: fastcells.clip_grad_norm_(ps, 0.5, error_if_nonfinite=True, backend="native"),
        backend="aot_eager")
    with pytest.raises(RuntimeError, match="is non-finite, so it cannot be clipped"):
        compiled(list(model.parameters()))


# ---------------------------------------------------------------------------- no graph break
CALLS = {
    "clip_grad_norm_": lambda m, be: fastcells.clip_grad_norm_(m.parameters(), 0.5, backend=be),
    "clip_grad_norm_-error_if_nonfinite": lambda m, be: fastcells.clip_grad_norm_(
        m.parameters(), 0.5, 2.0, True, backend=be),
    "get_total_norm": lambda m, be: fastcells.get_total_norm(
        (p.grad for p in m.parameters() if p.grad is not None), math.inf, True, backend=be),
    "clip_grads_with_norm_": lambda m, be: fastcells.clip_grads_with_norm_(
        m.parameters(), 0.5, torch.tensor(2.0), backend=be),
}
OPS = {"clip_grad_norm_": "fastcells.clip_norm_and_scale_",
       "clip_grad_norm_-error_if_nonfinite": "fastcells.clip_norm_and_scale_",
       "get_total_norm": "fastcells.clip_total_norm",
       "clip_grads_with_norm_": "fastcells.clip_scale_by_norm_"}


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("name", list(CALLS))
def test_explain_reports_no_graph_break(name, backend, device, monkeypatch):
    """torch._dynamo.explain: one graph, no break; on triton the graph holds the fastcells op
    (opaque: the table cache and the launches are not traced, and run only when it runs)."""
    model = make_model(device)
    planned = []
    plan = kclip.plan
    monkeypatch.setattr(kclip, "plan", lambda *a, **k: planned.append(1) or plan(*a, **k))
    out = torch._dynamo.explain(CALLS[name])(model, backend)
    assert out.graph_break_count == 0, [b.reason for b in out.break_reasons]
    assert out.graph_count == 1
    code = out.graphs[0].code
    assert "data_ptr" not in code
    if backend == "triton":
        assert f"torch.ops.{OPS[name]}" in code
        assert len(planned) == 1                 # the op ran once (explain runs the graph once)
    else:
        assert "torch.ops.fastcells" not in code or "clip_check_finite" in code
