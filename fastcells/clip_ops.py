"""The fused clip-by-global-norm passes as PyTorch custom ops (no API logic here: see
:mod:`fastcells.clip`).

Being custom ops with fake (meta) implementations, they are opaque to torch.compile: Dynamo
records one node per op instead of tracing the pointer-table cache (``data_ptr()``, dict
lookups) and the Triton launches, so the clip functions run under
``torch.compile(fullgraph=True)`` with no graph break.  Eager calls go through the same ops,
except one whose tables are already cached: :mod:`fastcells.clip` then calls the ops' bodies
(:func:`total_norm`, :func:`norm_and_scale_`, :func:`scale_by_norm_`: each op's name without
``clip_``, the plan in place of the tensor list) directly and bumps the version counters
itself, sparing the dispatcher's per-tensor cost.

The ops are named for the passes they run, not for the public functions of :mod:`fastcells.clip`
that call them; their arguments keep the public functions' order.

``fastcells::clip_total_norm(Tensor[] tensors, float norm_type, bool error_if_nonfinite) -> Tensor``
    pass 1, for ``get_total_norm``: the total norm (0-d, the tensors' promoted dtype, on the
    first tensor's device).
``fastcells::clip_norm_and_scale_(Tensor(a!)[] grads, float max_norm, float norm_type,
bool error_if_nonfinite) -> Tensor``
    for ``clip_grad_norm_``: pass 1 with the clip coefficient, then pass 2: every grad scaled in
    place; returns the total.
``fastcells::clip_scale_by_norm_(Tensor(a!)[] grads, float max_norm, Tensor total_norm) -> ()``
    for ``clip_grads_with_norm_``: the coefficient ``clamp(max_norm / (total_norm + 1e-6),
    max=1)`` of a given 0-d total (on the first grad's device), then pass 2.
``fastcells::clip_check_finite(Tensor total, float norm_type) -> Tensor``
    torch's non-finite error for the reference path; returns a copy of ``total``.

The mutating ops declare ``mutates_args``: under torch.compile, AOTAutograd functionalizes them
(Inductor re-inplaces them onto the real gradients; ``aot_eager`` runs them on copies and copies
back), and eager calls bump the gradients' version counters as an in-place op does.

``error_if_nonfinite=True`` reads the total back to the host *inside* an op (the one host
synchronisation, as in torch) and raises torch's error there, before any gradient is scaled:
the read is invisible to Dynamo, so even that flag compiles without a graph break.  Every check
that can raise (non-finite total, gradients with internally overlapping memory) runs before the
first write.  No op has autograd: the clip functions run under ``torch.no_grad()``.
"""
from functools import reduce
from typing import List

import torch
from torch import Tensor

from .kernels import clip_launch as _launch
from .kernels import clip_plan as _plan


OVERLAP_MSG = ("unsupported operation: more than one element of the written-to tensor refers to a "
               "single memory location. Please clone() the tensor before performing the operation.")


def nonfinite_error(norm_type):
    return RuntimeError(
        f"The total norm of order {norm_type} for gradients from "
        "`parameters` is non-finite, so it cannot be clipped. To disable "
        "this error and scale the gradients by the non-finite norm anyway, "
        "set `error_if_nonfinite=False`"
    )


def check_finite(total, norm_type):
    # The one host synchronisation, asked for by error_if_nonfinite=True (as in torch).
    if torch.logical_or(total.isnan(), total.isinf()):
        raise nonfinite_error(norm_type)


def check_writable(grads):
    """torch's refusal to scale a tensor whose elements share memory, raised before any
    gradient is touched."""
    if any(_plan.internal_overlap(g) for g in grads):
        raise RuntimeError(OVERLAP_MSG)


def _fake_total(tensors):
    dtype = reduce(torch.promote_types, (t.dtype for t in tensors))
    return tensors[0].new_empty((), dtype=dtype)


# ------------------------------------------------------------------ the passes over a plan
# The bodies of the ops, given the plan; fastcells.clip also calls them directly on an eager
# call whose plan is cached (and bumps the version counters, as the op would).  The modules are
# looked up at call time (``_plan.plan``, ``_launch.multi_tensor_scale_``), so a test may patch
# them.
def total_norm(plan, norm_type, error_if_nonfinite):
    total, _ = _launch.multi_tensor_norm(plan, norm_type)
    if error_if_nonfinite:
        check_finite(total, norm_type)
    return total


def norm_and_scale_(plan, max_norm, norm_type, error_if_nonfinite):
    total, coef = _launch.multi_tensor_norm(plan, norm_type, max_norm)
    if error_if_nonfinite:
        check_finite(total, norm_type)
    scale_(plan, coef)
    return total


def scale_by_norm_(plan, max_norm, total):
    scale_(plan, _launch.clip_coefficient(total, max_norm))


def scale_(plan, coef):
    """Pass 2: every tensor of ``plan`` times the 0-d device tensor ``coef``, in place, after
    torch's refusal of gradients with internally overlapping memory."""
    if plan.overlapping:
        raise RuntimeError(OVERLAP_MSG)
    _launch.multi_tensor_scale_(plan, coef)


# ------------------------------------------------------------------------------------ the ops
@torch.library.custom_op("fastcells::clip_total_norm", mutates_args=())
def clip_total_norm(tensors: List[Tensor], norm_type: float, error_if_nonfinite: bool) -> Tensor:
    return total_norm(_plan.plan(tensors), norm_type, error_if_nonfinite)


@clip_total_norm.register_fake
def _(tensors, norm_type, error_if_nonfinite):
    return _fake_total(tensors)


@torch.library.custom_op("fastcells::clip_norm_and_scale_", mutates_args=("grads",))
def clip_norm_and_scale_(grads: List[Tensor], max_norm: float, norm_type: float,
                         error_if_nonfinite: bool) -> Tensor:
    return norm_and_scale_(_plan.plan(grads), max_norm, norm_type, error_if_nonfinite)


@clip_norm_and_scale_.register_fake
def _(grads, max_norm, norm_type, error_if_nonfinite):
    return _fake_total(grads)


@torch.library.custom_op("fastcells::clip_scale_by_norm_", mutates_args=("grads",))
def clip_scale_by_norm_(grads: List[Tensor], max_norm: float, total_norm: Tensor) -> None:
    scale_by_norm_(_plan.plan(grads), max_norm, total_norm)


@clip_scale_by_norm_.register_fake
def _(grads, max_norm, total_norm):
    return None


@torch.library.custom_op("fastcells::clip_check_finite", mutates_args=())
def clip_check_finite(total: Tensor, norm_type: float) -> Tensor:
    """torch's non-finite error, as an op (for the reference path): returns a copy of
    ``total``, which the caller uses from then on, so the check can be neither dropped from a
    compiled graph nor moved after a scale that depends on it."""
    check_finite(total, norm_type)
    return total.clone()


@clip_check_finite.register_fake
def _(total, norm_type):
    return torch.empty_like(total)


_DTENSOR_REGISTERED = False


def register_dtensor_sharding():
    """Let DTensor run ``clip_check_finite``: on the full (replicated) total, so a Partial one
    is reduced first and every rank checks, and raises on, the same value.  Done on first use
    (importing torch.distributed.tensor at fastcells' import would cost every user)."""
    global _DTENSOR_REGISTERED
    if _DTENSOR_REGISTERED:
        return
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.experimental import register_sharding

    @register_sharding(torch.ops.fastcells.clip_check_finite.default)
    def _(total, norm_type):
        return [([Replicate()], [Replicate(), None])]
    _DTENSOR_REGISTERED = True
