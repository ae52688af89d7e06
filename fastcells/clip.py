"""Clip-by-global-norm: drop-in for ``torch.nn.utils.clip_grad_norm_``, ``get_total_norm`` and
``clip_grads_with_norm_``.

Same signatures (plus a keyword-only ``backend``), return values (dtype and device included),
errors and edge cases as torch, with one deliberate difference: the inf norm (and -inf and
negative-p norms) of an empty tensor, where torch raises, is the identity of its reduction (0 for
inf, inf for -inf and p < 0), which leaves the total of the other tensors unchanged.

Backends: ``triton`` (the fused passes of :mod:`fastcells.kernels.clip`: a few launches, no host
synchronisation unless ``error_if_nonfinite=True``), ``reference`` (plain torch ops, per tensor:
``reference.clip_total_norm`` and ``reference.clip_scale_by_norm_``),
``native`` (torch's own functions), ``auto`` (triton when every tensor is on CUDA, else native).
The triton backend covers strided float64/float32/float16/bfloat16 tensors, and DTensor
gradients (FSDP2, tensor parallel) with Shard / Replicate placements on one mesh, whose local
shards it clips with one all-reduce per mesh dim (:mod:`fastcells.clip_dtensor`); anything else
(complex, sparse, other tensor subclasses) goes to torch's own functions.

The host path: the pointer tables are cached (:mod:`fastcells.kernels.clip_plan`), and an eager
call whose tables are cached calls the passes directly, with no per-tensor work beyond reading
each gradient's address, dtype, device, type and numel (sizes and strides too when one is not
contiguous) to find them: a few hundred nanoseconds per tensor.

``foreach`` has torch's meaning: ``True`` on a device without foreach support raises torch's
error; otherwise it only picks an implementation, and the fused kernels are the fast one.

``torch.compile``: all three functions trace with no graph break (``fullgraph=True`` works) on
the triton and reference backends.  The triton passes are the custom ops of
:mod:`fastcells.clip_ops` (``fastcells::clip_total_norm``, ``fastcells::clip_norm_and_scale_``,
``fastcells::clip_scale_by_norm_``), opaque to Dynamo; the table cache and the launches run
when the compiled graph runs, eager or compiled alike.  ``error_if_nonfinite=True`` keeps its
one host read, done inside an op (``fastcells::clip_check_finite`` on the reference backend), so
it too compiles without a graph break and raises torch's error, every gradient untouched, when
the graph runs.  The native backend is torch's own code: it compiles likewise, except that
``error_if_nonfinite=True`` there is a data-dependent branch, a graph break (an error under
``fullgraph=True``), exactly as with :func:`torch.nn.utils.clip_grad_norm_` itself; ``auto``
is native on CPU tensors.
"""
import types
import warnings

import torch
from torch.nn.utils import clip_grad as _torch_clip_grad

from .backend import _check_name, default_backend, resolve
from . import clip_dtensor as _dt
from . import clip_ops as _ops
from . import reference as _ref
from .clip_ops import check_writable as _check_writable
from .kernels import clip_plan as _plan
from .kernels.common import SUPPORTED_DTYPES

try:
    from torch.utils._foreach_utils import _device_has_foreach_support
except ImportError:  # pragma: no cover - older torch
    def _device_has_foreach_support(device):
        return device.type in ("cpu", "cuda")

__all__ = ["clip_grad_norm_", "clip_grads_with_norm_", "get_total_norm"]

# The native backend: torch's own functions, bound once here from the module that defines them,
# so a user who patches torch with fastcells' (``torch.nn.utils.clip_grad_norm_ =
# fastcells.clip_grad_norm_``, or the same in ``torch.nn.utils.clip_grad``) gets fastcells, and
# fastcells' native path still calls torch's original instead of itself.
_torch_get_total_norm = _torch_clip_grad._get_total_norm
_torch_clip_grads_with_norm_ = _torch_clip_grad._clip_grads_with_norm_
_torch_clip_grad_norm_ = _torch_clip_grad.clip_grad_norm_

# -------------------------------------------------------------------------------- the checks
def _check_foreach(foreach, tensors):
    if foreach:
        for device in dict.fromkeys(t.device for t in tensors):
            if not _device_has_foreach_support(device):
                raise RuntimeError(
                    f"foreach=True was passed, but can't use the foreach API on {device.type} tensors")


_kernel_ready = _plan.kernel_ready


def _name(backend):
    """The backend name in force for this call (checked even when there is nothing to do)."""
    return default_backend() if backend is None else _check_name(backend)


def _backend(name, tensors):
    """The concrete backend for this call (``tensors`` non-empty)."""
    if name == "auto":
        return "triton" if all(t.is_cuda and _kernel_ready(t) for t in tensors) else "native"
    if not all(isinstance(t, torch.Tensor) for t in tensors):
        return "native"      # torch's own error for a None (or any non-tensor) in the list
    if name == "triton":
        if not all(_kernel_ready(t) for t in tensors):
            return "native"
        for t in {t.device: t for t in tensors}.values():
            resolve("triton", t)     # a clear error for CPU tensors without the interpreter
    return name


def _cached_plan(name, tensors):
    """The kernels' cached plan for an eager call on backend ``name``, or None (then the call
    takes the full path, whose op builds the plan).  A hit has passed every check the full
    path makes (:func:`_backend`, writability) when it was built, on tensors with the same
    type, dtype, device, address, sizes and strides, so only the per-device ones are redone.
    Never under torch.compile (the op is the graph's node) or a dispatch mode (it sees the
    op); ``auto`` on a CPU first tensor is native without a look."""
    if name == "auto":
        if not (isinstance(tensors[0], torch.Tensor) and tensors[0].is_cuda):
            return None
    elif name != "triton":
        return None
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack():
        return None
    plan = _plan.cached(tensors)
    if plan is None or not plan.ready or (name == "auto" and not plan.all_cuda):
        return None
    if name == "triton":
        for i in plan.firsts:
            resolve("triton", tensors[i])
    return plan


def _sharded(name, tensors):
    """The local view of DTensor gradients for the fused kernels (:mod:`fastcells.clip_dtensor`),
    or None: not DTensors, not covered, or not this backend's."""
    if name not in ("triton", "auto"):
        return None
    view = _dt.sharded(tensors)
    if view is None or (name == "auto" and not all(t.is_cuda for t in view.locals)):
        return None
    if name == "triton":
        for t in {t.device: t for t in view.locals}.values():
            resolve("triton", t)     # a clear error for CPU tensors without the interpreter
    return view


def _devices(plan, tensors):
    return [tensors[i] for i in plan.firsts]


# ------------------------------------------------------------------------------ the public API
def get_total_norm(tensors, norm_type=2.0, error_if_nonfinite=False, foreach=None, *,
                   backend=None):
    r"""The ``norm_type`` norm of the per-tensor norms of ``tensors`` (a Tensor or an iterable):
    :func:`torch.nn.utils.get_total_norm`.  A 0-d tensor of the tensors' promoted dtype on the
    first tensor's device; ``torch.tensor(0.0)`` when there are none."""
    with torch.no_grad():
        tensors = [tensors] if isinstance(tensors, torch.Tensor) else list(tensors)
        norm_type = float(norm_type)
        name = _name(backend)
        if not tensors:
            return torch.tensor(0.0)
        plan = _cached_plan(name, tensors)
        if plan is not None:
            _check_foreach(foreach, _devices(plan, tensors))
            return _ops.total_norm(plan, norm_type, bool(error_if_nonfinite))
        view = _sharded(name, tensors)
        if view is not None:
            _check_foreach(foreach, view.locals)
            return _dt.get_total_norm(view, norm_type, bool(error_if_nonfinite))
        be = _backend(name, tensors)
        if be == "native":
            return _torch_get_total_norm(tensors, norm_type, error_if_nonfinite, foreach)
        _check_foreach(foreach, tensors)
        if be == "triton":     # the check, if asked, inside the op
            return _ops.clip_total_norm(tensors, norm_type, bool(error_if_nonfinite))
        total = _ref.clip_total_norm(tensors, norm_type)
        if error_if_nonfinite:
            if _dt.is_dtensor(total):
                _ops.register_dtensor_sharding()
            total = _ops.clip_check_finite(total, norm_type)
        return total


def clip_grads_with_norm_(parameters, max_norm, total_norm, foreach=None, *, backend=None):
    r"""Scale the gradients of ``parameters`` in place by
    ``clamp(max_norm / (total_norm + 1e-6), max=1)``: :func:`torch.nn.utils.clip_grads_with_norm_`.
    The coefficient is computed and applied on the device, with no host-side branch."""
    with torch.no_grad():
        if isinstance(parameters, torch.Tensor):
            parameters = [parameters]
        params = [p for p in parameters if p.grad is not None]
        grads = [p.grad for p in params]
        max_norm = float(max_norm)
        name = _name(backend)
        if not grads:
            return None
        usual_total = (isinstance(total_norm, torch.Tensor) and total_norm.dim() == 0
                       and total_norm.dtype in SUPPORTED_DTYPES)     # a DTensor too
        plain_total = usual_total and type(total_norm) is torch.Tensor
        plan = _cached_plan(name, grads) if plain_total else None
        if plan is not None:
            _check_foreach(foreach, _devices(plan, grads))
            _ops.scale_by_norm_(plan, max_norm, total_norm.to(grads[0].device))
            torch.autograd.graph.increment_version(grads)     # as the op does
            return None
        view = _sharded(name, grads) if usual_total else None
        if view is not None:
            _check_foreach(foreach, view.locals)
            _dt.clip_grads_with_norm_(view, max_norm, total_norm)
            return None
        be = _backend(name, grads)
        if be != "native" and not plain_total:
            be = "native"     # an unusual total_norm: torch's own arithmetic and errors
        if be == "native":
            return _torch_clip_grads_with_norm_(params, max_norm, total_norm, foreach)
        _check_foreach(foreach, grads)
        if be == "triton":     # the op checks the grads are writable before touching any
            _ops.clip_scale_by_norm_(grads, max_norm, total_norm.to(grads[0].device))
        else:
            _check_writable(grads)
            _ref.clip_scale_by_norm_(grads, max_norm, total_norm)
        return None


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None,
                    *, backend=None):
    r"""Clip the gradients of ``parameters`` (a Tensor or an iterable, a generator too) by their
    global norm, in place: :func:`torch.nn.utils.clip_grad_norm_`.  Returns the total norm of
    the gradients (before clipping), a 0-d tensor of their promoted dtype on the first
    gradient's device.

    On the triton backend: one reduction launch per dtype, two small launches for the per-tensor
    norms and the total, one scaling launch per dtype; the coefficient never leaves the device."""
    with torch.no_grad():
        if isinstance(parameters, torch.Tensor):
            parameters = [parameters]
        else:
            is_generator = isinstance(parameters, types.GeneratorType)
            parameters = list(parameters)
            if is_generator and not parameters:
                warnings.warn("`parameters` is an empty generator, no gradient clipping will occur.",
                              stacklevel=2)
        grads = [p.grad for p in parameters if p.grad is not None]
        name = _name(backend)
        if not grads:
            float(norm_type), float(max_norm)      # torch's conversions (and their errors)
            return torch.tensor(0.0)
        plan = _cached_plan(name, grads)
        if plan is not None and isinstance(max_norm, (float, int)):
            _check_foreach(foreach, _devices(plan, grads))
            total = _ops.norm_and_scale_(plan, float(max_norm), float(norm_type),
                                         bool(error_if_nonfinite))
            torch.autograd.graph.increment_version(grads)     # as the op does
            return total
        view = _sharded(name, grads)
        if view is not None and isinstance(max_norm, (float, int)):
            _check_foreach(foreach, view.locals)
            return _dt.clip_grad_norm_(view, float(max_norm), float(norm_type),
                                       bool(error_if_nonfinite))
        be = _backend(name, grads)
        if be == "native":
            return _torch_clip_grad_norm_(parameters, max_norm, norm_type, error_if_nonfinite, foreach)
        if be == "reference":
            total = get_total_norm(grads, norm_type, error_if_nonfinite, foreach, backend=be)
            clip_grads_with_norm_(parameters, max_norm, total, foreach, backend=be)
            return total
        # triton: norm and coefficient in one pass, the scale in a second
        norm_type = float(norm_type)
        try:
            max_norm_f = float(max_norm)
        except (TypeError, ValueError):
            # torch converts max_norm only after the norm (whose errors come first)
            get_total_norm(grads, norm_type, error_if_nonfinite, foreach, backend=be)
            raise
        _check_foreach(foreach, grads)
        # one op: norm and coefficient, the finiteness check if asked, the writability check,
        # then the scale; nothing is touched when it raises
        return _ops.clip_norm_and_scale_(grads, max_norm_f, norm_type, bool(error_if_nonfinite))
