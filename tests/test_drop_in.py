"""The drop-in patterns users write around torch's own machinery.

* ``torch.nn.utils.clip_grad_norm_ = fastcells.clip_grad_norm_`` (and the same for
  ``get_total_norm`` / ``clip_grads_with_norm_``, in ``torch.nn.utils`` or in the module that
  defines them, ``torch.nn.utils.clip_grad``, whose ``clip_grad_norm_`` calls the module's
  ``_get_total_norm`` and ``_clip_grads_with_norm_``): torch's names then run fastcells, with no
  recursion, and give torch's total and gradients.
* ``torch.save(model)`` of a whole model with fastcells modules in it, ``torch.load`` with
  ``weights_only=True`` (torch's default): loads exactly where the same model made of torch.nn's
  modules loads (allowlisting torch's classes is enough), fails where it fails, and gives back
  fastcells modules with their backend.
"""
import contextlib
import io
import pickle

import pytest
import torch
import torch.nn.utils as tnu
from torch import nn
from torch.nn.utils import clip_grad as tcg
from torch.nn.utils import parametrize
from tolerances import TOL

import fastcells
from fastcells.modules import TWINS

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning")

# torch's own functions, taken before any test patches them
TORCH_CLIP_GRAD_NORM_ = tcg.clip_grad_norm_
TORCH_GET_TOTAL_NORM = tcg._get_total_norm
TORCH_CLIP_GRADS_WITH_NORM_ = tcg._clip_grads_with_norm_


# ------------------------------------------------------------------------ how users pick a backend
@contextlib.contextmanager
def _no_context():
    yield


def _mode(request, monkeypatch):
    """The backend resolution a test runs under (the default, FASTCELLS_BACKEND, use_backend),
    as a function that gives a fresh context manager for each block."""
    kind, _, name = request.param.partition(":")
    monkeypatch.delenv("FASTCELLS_BACKEND", raising=False)
    if kind == "env":
        monkeypatch.setenv("FASTCELLS_BACKEND", name)
    if kind == "use_backend":
        return lambda: fastcells.use_backend(name)
    return _no_context


MODES = ["default", "env:triton", "env:reference", "use_backend:triton",
         "use_backend:reference", "use_backend:native"]


@pytest.fixture(params=MODES)
def mode(request, monkeypatch):
    return _mode(request, monkeypatch)


# --------------------------------------------------------------------------- clip: patching torch
_UTILS = [(tnu, "clip_grad_norm_"), (tnu, "get_total_norm"), (tnu, "clip_grads_with_norm_")]
_DEFINING = [(tcg, "clip_grad_norm_"), (tcg, "_get_total_norm"), (tcg, "_clip_grads_with_norm_")]
PATCHES = {
    "utils": _UTILS,
    "clip_grad": _DEFINING,
    "everywhere": _UTILS + _DEFINING,
    **{f"utils.{n}": [(m, n)] for m, n in _UTILS},
    **{f"clip_grad.{n}": [(m, n)] for m, n in _DEFINING},
}


def _fastcells_twin(name):
    return getattr(fastcells, name.lstrip("_"))


def _params(seed):
    """Float64 parameters with odd shapes and gradients large enough to be clipped."""
    g = torch.Generator().manual_seed(seed)
    params = []
    for shape in [(3, 5), (7,), (2, 3, 1), (5,)]:
        p = nn.Parameter(torch.zeros(shape, dtype=torch.float64))
        p.grad = torch.randn(shape, generator=g, dtype=torch.float64) * 3
        params.append(p)
    params.append(nn.Parameter(torch.zeros(4, dtype=torch.float64)))   # no grad
    return params


def _assert_same(total, grads, ref_total, ref_grads):
    assert total.dtype == ref_total.dtype and total.device == ref_total.device
    torch.testing.assert_close(total, ref_total, **TOL[torch.float64])
    assert len(grads) == len(ref_grads)
    for a, b in zip(grads, ref_grads):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b, **TOL[torch.float64])


def _grads(params):
    return [None if p.grad is None else p.grad.clone() for p in params]


# The ways a script calls the (patched) torch names.
def _call_utils_clip(params, max_norm, norm_type):
    return tnu.clip_grad_norm_(params, max_norm, norm_type)


def _call_defining_clip(params, max_norm, norm_type):
    return tcg.clip_grad_norm_(params, max_norm, norm_type=norm_type)


def _call_generator(params, max_norm, norm_type):
    return tnu.clip_grad_norm_((p for p in params), max_norm, norm_type)


def _call_two_steps(params, max_norm, norm_type):
    total = tnu.get_total_norm([p.grad for p in params if p.grad is not None], norm_type)
    tnu.clip_grads_with_norm_(params, max_norm, total)
    return total


def _call_deprecated(params, max_norm, norm_type):
    with pytest.warns(FutureWarning):
        return tnu.clip_grad_norm(params, max_norm, norm_type)


CALLS = [_call_utils_clip, _call_defining_clip, _call_generator, _call_two_steps,
         _call_deprecated]


@pytest.mark.parametrize("patch", list(PATCHES))
def test_torch_names_patched_with_fastcells(patch, mode, monkeypatch):
    """Each way of patching torch's clip functions with fastcells', each way a script calls
    them, on every backend resolution: no recursion, torch's total and gradients."""
    cases = [(seed, call, norm_type) for seed, call in enumerate(CALLS)
             for norm_type in (2.0, float("inf"))]
    expected = []
    for seed, _, norm_type in cases:          # torch's results, before any patch
        ref = _params(seed)
        expected.append((TORCH_CLIP_GRAD_NORM_(ref, 1.0, norm_type), _grads(ref)))
    for module, name in PATCHES[patch]:
        monkeypatch.setattr(module, name, _fastcells_twin(name))
    for (seed, call, norm_type), (ref_total, ref_grads) in zip(cases, expected):
        params = _params(seed)
        with mode():
            total = call(params, 1.0, norm_type)
        _assert_same(total, _grads(params), ref_total, ref_grads)


def test_native_path_calls_torchs_original(monkeypatch):
    """The native backend runs torch's own functions even while torch's names are fastcells'."""
    ref = _params(0)                          # torch's results, before any patch
    ref_total = TORCH_CLIP_GRAD_NORM_(ref, 1.0)
    ref_grads = _grads(ref)
    ref_norm3 = TORCH_GET_TOTAL_NORM([g for g in ref_grads if g is not None], 3.0)
    TORCH_CLIP_GRADS_WITH_NORM_(ref, 0.5, ref_total)
    for module, name in PATCHES["everywhere"]:
        monkeypatch.setattr(module, name, _fastcells_twin(name))
    params = _params(0)
    total = fastcells.clip_grad_norm_(params, 1.0, backend="native")
    _assert_same(total, _grads(params), ref_total, ref_grads)
    grads = [p.grad for p in params if p.grad is not None]
    torch.testing.assert_close(fastcells.get_total_norm(grads, 3.0, backend="native"),
                               ref_norm3, rtol=0, atol=0)
    fastcells.clip_grads_with_norm_(params, 0.5, total, backend="native")
    _assert_same(total, _grads(params), ref_total, _grads(ref))


def test_patched_errors_are_torchs(monkeypatch):
    """Errors through a patched name are torch's (type and message), gradients untouched."""
    ref = _params(0)
    ref[0].grad[0, 0] = float("nan")
    with pytest.raises(RuntimeError) as want:     # torch's error, before any patch
        TORCH_CLIP_GRAD_NORM_(ref, 1.0, error_if_nonfinite=True)
    for module, name in PATCHES["everywhere"]:
        monkeypatch.setattr(module, name, _fastcells_twin(name))
    params = _params(0)
    params[0].grad[0, 0] = float("nan")
    before = _grads(params)
    with pytest.raises(RuntimeError) as got:
        tnu.clip_grad_norm_(params, 1.0, error_if_nonfinite=True)
    assert str(got.value) == str(want.value)
    for a, b in zip(_grads(params), before):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


# ----------------------------------------------------------------------- torch.save / torch.load
I, H, T, B = 3, 5, 3, 2
# torch's classes, allowlisted as PyTorch's word-language-model example does: the container,
# the other layers, and exactly torch's recurrent classes
TORCH_RNN_CLASSES = list(TWINS)
ALLOW = [nn.Sequential, nn.Linear] + TORCH_RNN_CLASSES
CLASSES = {c.__name__: c for c in TORCH_RNN_CLASSES}


def _torch_module(name, seed=0):
    torch.manual_seed(seed)
    cls = CLASSES[name]
    kw = {"num_layers": 2} if issubclass(cls, nn.RNNBase) else {}
    return cls(I, H, **kw).double()


def _input(name):
    g = torch.Generator().manual_seed(1)
    if issubclass(CLASSES[name], nn.RNNBase):
        return torch.randn(T, B, I, generator=g, dtype=torch.float64)
    return torch.randn(B, I, generator=g, dtype=torch.float64)


def _flat(out):
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in _flat(o)]


def _model(rnn):
    """A whole model with the recurrent module inside (Sequential: torch's own container)."""
    torch.manual_seed(2)
    return nn.Sequential(nn.Linear(I, I).double(), rnn)


def _run(model, name):
    return _flat(model[1](model[0](_input(name))))


def _saved(obj):
    f = io.BytesIO()
    torch.save(obj, f)
    return f.getvalue()


def _load(data, allow=None, **kw):
    ctx = torch.serialization.safe_globals(allow) if allow is not None else _no_context()
    with ctx:
        return torch.load(io.BytesIO(data), **kw)


def _fastcells_module(name, build):
    if build == "convert":
        return fastcells.convert(_torch_module(name))
    backend = None if build == "default" else build
    kw = {"num_layers": 2} if issubclass(CLASSES[name], nn.RNNBase) else {}
    torch.manual_seed(0)
    return TWINS[CLASSES[name]](I, H, backend=backend, **kw).double()


# (how the module was built, the backend resolution its forward runs under); a module built
# with backend= keeps it whatever the resolution, so those run once
LOAD_CASES = [("default", "default"), ("default", "env:triton"),
              ("default", "use_backend:reference"), ("convert", "default"),
              ("convert", "env:triton"), ("convert", "use_backend:reference"),
              ("triton", "default"), ("reference", "default")]


@pytest.fixture
def run_mode(request, monkeypatch):
    return _mode(request, monkeypatch)


@pytest.mark.parametrize("name", list(CLASSES))
@pytest.mark.parametrize("build,run_mode", LOAD_CASES, indirect=["run_mode"],
                         ids=[f"{b}-{m}" for b, m in LOAD_CASES])
def test_whole_model_loads_with_torchs_allowlist(name, build, run_mode):
    """torch.save(model) then torch.load(f) under safe_globals of torch's classes: the torch.nn
    model loads, and so does the fastcells one, as fastcells modules with their backend that
    compute what the saved model computes."""
    assert isinstance(_load(_saved(_model(_torch_module(name))), ALLOW)[1], CLASSES[name])
    model = _model(_fastcells_module(name, build))
    with run_mode():
        want = _run(model, name)                    # after a forward, as training leaves it
        data = _saved(model)
        with torch.serialization.safe_globals(ALLOW):
            assert torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data)) == []
        loaded = _load(data, ALLOW)
        got = _run(loaded, name)
    rnn = loaded[1]
    assert type(rnn) is type(model[1]) and rnn.backend == model[1].backend
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _load_error(data, allow):
    with pytest.raises(Exception) as e:
        _load(data, allow)
    return e


# allowlists under which torch's model does not load: nothing; torch's other classes without the
# container; the container and every torch recurrent class but this one's
REFUSING = {
    "nothing": lambda name: None,
    "no-container": lambda name: TORCH_RNN_CLASSES,
    "not-its-twin": lambda name: [nn.Sequential, nn.Linear] + [c for c in TORCH_RNN_CLASSES
                                                                if c is not CLASSES[name]],
}


@pytest.mark.parametrize("name", list(CLASSES))
@pytest.mark.parametrize("allow", list(REFUSING))
@pytest.mark.parametrize("whole", [True, False], ids=["in-model", "bare"])
def test_refused_where_torch_refuses(name, allow, whole):
    """Where torch.nn's model does not load, the fastcells one does not either: the same
    exception type, and the message names the same global (the fastcells class for torch's);
    get_unsafe_globals_in_checkpoint agrees."""
    allow = REFUSING[allow](name)
    if not whole and allow is TORCH_RNN_CLASSES:
        pytest.skip("a bare module under torch's recurrent classes loads (test above)")
    wrap = _model if whole else (lambda m: m)
    ours = wrap(fastcells.convert(_torch_module(name)))
    theirs, mine = _saved(wrap(_torch_module(name))), _saved(ours)
    want, got = _load_error(theirs, allow), _load_error(mine, allow)
    assert got.type is want.type
    torch_path = f"{CLASSES[name].__module__}.{CLASSES[name].__qualname__}"
    ours_path = f"{TWINS[CLASSES[name]].__module__}.{TWINS[CLASSES[name]].__qualname__}"
    assert str(got.value) == str(want.value).replace(torch_path, ours_path)
    with torch.serialization.safe_globals(allow or []):
        unsafe_theirs = torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(theirs))
        unsafe_mine = torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(mine))
    assert sorted(unsafe_mine) == sorted(p.replace(torch_path, ours_path) for p in unsafe_theirs)


def test_fastcells_classes_allowlisted_by_name():
    """Allowlisting the fastcells class itself (torch's usual way for any class) works too,
    and does not make torch's class trusted."""
    data = _saved(fastcells.LSTM(I, H, backend="reference"))
    assert type(_load(data, [fastcells.LSTM])) is fastcells.LSTM
    with pytest.raises(pickle.UnpicklingError):
        _load(_saved(nn.LSTM(I, H)), [fastcells.LSTM])


def test_allowlist_context_ends():
    """Out of the safe_globals block the fastcells class is no longer trusted, as torch's is not."""
    data = _saved(fastcells.GRU(I, H))
    with torch.serialization.safe_globals([nn.GRU]):
        assert type(torch.load(io.BytesIO(data))) is fastcells.GRU
    with pytest.raises(pickle.UnpicklingError):
        torch.load(io.BytesIO(data))


def _weight_drop(module):
    """AWD-LSTM's weight drop as a parametrization of the recurrent weight."""
    class WeightDrop(nn.Module):
        def forward(self, w):
            return nn.functional.dropout(w, 0.5, self.training)
    parametrize.register_parametrization(module, "weight_hh_l0", WeightDrop())
    return module


def test_parametrized_module_saves_as_torchs_does():
    """torch refuses to pickle a parametrized module whole (its state_dict is the way); the
    converted one is refused the same way, and its state_dict loads into torch's."""
    theirs = _model(_weight_drop(nn.LSTM(I, H).double()))
    ours = fastcells.convert(_model(_weight_drop(nn.LSTM(I, H).double())))
    assert type(ours[1]).__mro__[1] is fastcells.LSTM
    with pytest.raises(Exception) as want:
        _saved(theirs)
    with pytest.raises(Exception) as got:
        _saved(ours)
    assert got.type is want.type and str(got.value) == str(want.value)
    sd = torch.load(io.BytesIO(_saved(ours.state_dict())))
    theirs.load_state_dict(sd)
    theirs.eval()
    ours.eval()
    for a, b in zip(_run(ours, "LSTM"), _run(theirs, "LSTM"), strict=True):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


@pytest.mark.parametrize("name", list(CLASSES))
@pytest.mark.parametrize("how", ["pickle", "weights_only=False"])
def test_unrestricted_loading(name, how):
    """Plain pickle and torch.load(weights_only=False) need no allowlist and give fastcells'
    class back with its backend."""
    model = _model(_fastcells_module(name, "reference"))
    if how == "pickle":
        loaded = pickle.loads(pickle.dumps(model))
    else:
        loaded = torch.load(io.BytesIO(_saved(model)), weights_only=False)
    assert type(loaded[1]) is type(model[1]) and loaded[1].backend == "reference"
    for a, b in zip(_run(loaded, name), _run(model, name), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", list(CLASSES))
def test_state_dict_round_trips(name):
    """A state_dict saved from a fastcells module loads (weights_only, no allowlist) into
    torch's, and torch's into fastcells': the same outputs."""
    theirs = _model(_torch_module(name, seed=3))
    ours = _model(_fastcells_module(name, "reference"))
    theirs.load_state_dict(torch.load(io.BytesIO(_saved(ours.state_dict()))))
    for a, b in zip(_run(ours, name), _run(theirs, name), strict=True):
        torch.testing.assert_close(a, b, **TOL[torch.float64])
    back = _model(_fastcells_module(name, "reference"))
    with torch.no_grad():
        for p in back.parameters():
            p.add_(1)
    back.load_state_dict(torch.load(io.BytesIO(_saved(theirs.state_dict()))))
    for a, b in zip(_run(back, name), _run(theirs, name), strict=True):
        torch.testing.assert_close(a, b, **TOL[torch.float64])
