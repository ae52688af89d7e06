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
