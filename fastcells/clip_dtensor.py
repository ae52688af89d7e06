"""Clip-by-global-norm of DTensor gradients (FSDP2, tensor parallel) on the fused kernels.

Each rank runs pass 1 on its local shards, stopping before the roots: a vector of per-tensor
sums of |x|^p (the count of nonzeros for p = 0; the max or min of |x| for the inf norms).  One
all-reduce per mesh dim (one in all on a 1-d mesh, FSDP2's) turns it into the global per-tensor
sums, SUM for finite p, MAX / MIN for +-inf, as torchtitan and Megatron do; every rank then takes
the roots, the total and the clip coefficient, and scales its own shards in place (pass 2).
A tensor replicated over a mesh dim is counted once: only the ranks at coordinate 0 of each
replicated dim add its sum (the max / min need no such care).

Every rank gets the same total, so ``error_if_nonfinite=True`` raises torch's error on every
rank, before any gradient is touched.  The result is what torch's functions return for DTensor
gradients: a 0-d DTensor on the gradients' mesh, ``Replicate()`` for finite p, and for the inf
norms the ``Partial("max")`` / ``Partial("min")`` placement torch gives them (holding the
already reduced value, which reducing again leaves unchanged).

Covered: every gradient a DTensor on one device mesh with Shard and Replicate placements, whose
local tensors the kernels can read; anything else (Partial placements, several meshes, plain
tensors mixed in) goes to torch's own functions, as do calls traced by torch.compile.
"""
import sys

import torch

from .clip_ops import check_finite, scale_
from .kernels import clip_launch as _launch
from .kernels import clip_plan as _plan


def dtensor_module():
    """``torch.distributed.tensor`` if it has been imported (no DTensor can exist before)."""
    return sys.modules.get("torch.distributed.tensor")


def is_dtensor(t):
    dt = dtensor_module()
    return dt is not None and isinstance(t, dt.DTensor)


class Sharded:
    """The local view of a list of DTensors on one mesh with Shard / Replicate placements."""

    def __init__(self, grads, mesh, locals_):
        self.grads, self.mesh, self.locals = grads, mesh, locals_
        self._owned = None

    def owned(self, plan):
        """(N,) bool on the total's device, in ``plan.order``: does this rank add the tensor's
        sum (False on the replicas past the first of a replicated mesh dim)."""
        if self._owned is None:
            coord = self.mesh.get_coordinate()
            flags = []
            for i in plan.order:
                placements = self.grads[i].placements
                flags.append(all(c == 0 for c, pl in zip(coord, placements) if pl.is_replicate()))
            self._owned = torch.tensor(flags, device=plan.device)
        return self._owned


def sharded(tensors):
    """A :class:`Sharded` view of ``tensors``, or None when the fused path does not cover them
    (see the module docstring)."""
    dt = dtensor_module()
    if dt is None or torch.compiler.is_compiling():
        return None
    first = tensors[0]
    if not isinstance(first, dt.DTensor):
        return None
    mesh = first.device_mesh
    locals_ = []
    for t in tensors:
        if not isinstance(t, dt.DTensor) or t.device_mesh != mesh:
            return None
        if not all(pl.is_shard() or pl.is_replicate() for pl in t.placements):
            return None
        local = t.to_local()
        if not _plan.kernel_ready(local):
            return None
        locals_.append(local)
    return Sharded(tensors, mesh, locals_)


def _reducer(view, plan, kind):
    import torch.distributed as dist

    def reduce_sums(sums):
        if kind == _launch.norm_kind(float("inf")):
            op = dist.ReduceOp.MAX
        elif kind == _launch.norm_kind(-float("inf")):
            op = dist.ReduceOp.MIN
        else:
            op = dist.ReduceOp.SUM
            sums.copy_(torch.where(view.owned(plan), sums, 0.0))   # where: 0 * inf is NaN
        for dim in range(view.mesh.ndim):
            dist.all_reduce(sums, op=op, group=view.mesh.get_group(dim))
    return reduce_sums


def _as_dtensor(view, total, norm_type):
    dt = dtensor_module()
    if norm_type == float("inf"):
        placement = dt.Partial("max")
    elif norm_type == -float("inf"):
        placement = dt.Partial("min")
    else:
        placement = dt.Replicate()
    return dt.DTensor.from_local(total, view.mesh, [placement] * view.mesh.ndim, run_check=False)


def total_norm(view, plan, norm_type, max_norm=None, error_if_nonfinite=False):
    """(total as a local 0-d tensor, coefficient or None): pass 1 over the mesh."""
    kind = _launch.norm_kind(norm_type)
    total, coef = _launch.multi_tensor_norm(plan, norm_type, max_norm,
                                            reduce_sums=_reducer(view, plan, kind))
    if error_if_nonfinite:
        check_finite(total, norm_type)      # the same total on every rank: all raise
    return total, coef


def get_total_norm(view, norm_type, error_if_nonfinite):
    plan = _plan.plan(view.locals)
    total, _ = total_norm(view, plan, norm_type, error_if_nonfinite=error_if_nonfinite)
    return _as_dtensor(view, total, norm_type)


def _scale_shards_(view, plan, coef):
    """Pass 2 on the local shards; the version counters of shards and DTensors both bumped."""
    scale_(plan, coef)
    torch.autograd.graph.increment_version(view.locals)
    torch.autograd.graph.increment_version(view.grads)


def clip_grad_norm_(view, max_norm, norm_type, error_if_nonfinite):
    plan = _plan.plan(view.locals)
    total, coef = total_norm(view, plan, norm_type, max_norm, error_if_nonfinite)
    _scale_shards_(view, plan, coef)
    return _as_dtensor(view, total, norm_type)


def clip_grads_with_norm_(view, max_norm, total):
    """Scale by a given total: a DTensor (its full value: a collective, on every rank, when it
    is Partial) or a plain 0-d tensor."""
    if is_dtensor(total):
        total = total.full_tensor()
    plan = _plan.plan(view.locals)
    _scale_shards_(view, plan, _launch.clip_coefficient(total.to(plan.device), max_norm))
