"""The layer's torch.func rules: vmap (a vmapped layer with shared weights is one batched launch,
the vmapped dimension folded into the batch; batched weights, an ensemble, run as stacked
members of one layer call), and torch's older vmap (``is_grads_batched``), which calls no
``vmap`` staticmethod.  The rules take the Function they batch (``fn``) and call its ``apply``.
"""
from types import SimpleNamespace

import torch

from .rnn_args import BACKWARD_TENSORS, INPUTS, WEIGHTS, BackwardArgs, LayerArgs


def _fold(t, dim, n, batch_dim):
    """Fold the vmapped dimension ``dim`` of ``t`` (None: unbatched, expanded) into its batch
    dimension: row b * n + k of the result is row b of member k (an empty placeholder, 1-D,
    stays as it is)."""
    if t is None or t.numel() == 0 and t.dim() == 1:
        return t
    if dim is None:
        t = t.unsqueeze(batch_dim + 1).expand(*t.shape[:batch_dim + 1], n,
                                              *t.shape[batch_dim + 1:])
    else:
        t = t.movedim(dim, batch_dim + 1)
    return t.flatten(batch_dim, batch_dim + 1)


def _unfold(t, n, batch_dim):
    """The inverse of :func:`_fold`: (..., B * n, ...) -> (..., B, n, ...), vmapped at
    batch_dim + 1 (an empty placeholder stays unbatched)."""
    if t is None or t.numel() == 0 and t.dim() == 1:
        return t, None
    return t.unflatten(batch_dim, (t.shape[batch_dim] // n, n)), batch_dim + 1


def _as_members(apply, info, in_dims, args, slots):
    """Batched weights (an ensemble) as stacked members of one call of ``apply``
    (``kernels.recurrence``: every member in the same launches): the tensors at ``slots`` get
    their vmapped dimension moved first, or are expanded where unbatched.  Returns the outputs,
    vmapped at dimension 0."""
    n = info.batch_size
    args = list(args)
    for i in range(len(args))[slots]:
        t, d = args[i], in_dims[i]
        if t is not None:
            args[i] = t.movedim(d, 0) if d is not None else t.expand(n, *t.shape)
    out = apply(*args)
    return out, tuple(None if o is None else 0 for o in out)


def _per_member(apply, info, in_dims, args):
    """Batched weights (an ensemble): one call per member, stacked."""
    outs = []
    for k in range(info.batch_size):   # (a tuple argument's in_dims entry is a tuple of Nones)
        outs.append(apply(*[a.select(d, k) if isinstance(d, int) else a
                            for a, d in zip(args, in_dims)]))
    stacked = tuple(None if o[0] is None else torch.stack(o) for o in zip(*outs))
    return stacked, tuple(None if o is None else 0 for o in stacked)


def layer_vmap(fn, info, in_dims, args):
    """RNNLayer's vmap rule over its ``LayerArgs``."""
    a, d = LayerArgs(*args), LayerArgs(*in_dims)
    stacked = a.w_hh.dim() - (d.w_hh is not None) == 3   # members already (nested vmap)
    ensemble = any(dim is not None for dim in in_dims[WEIGHTS])
    if stacked or d.batch_sizes is not None or (a.w_hr is not None and ensemble):
        # stacked members, batched lengths, or a projected ensemble: member by member
        return _per_member(fn.apply, info, in_dims, args)
    if ensemble:
        return _as_members(fn.apply, info, in_dims, args, INPUTS)
    n = info.batch_size
    out = fn.apply(*a._replace(x=_fold(a.x, d.x, n, 1), h0=_fold(a.h0, d.h0, n, 0),
                               c0=_fold(a.c0, d.c0, n, 0),
                               batch_sizes=None if a.batch_sizes is None else a.batch_sizes * n))
    # the batch dimension of each output: (T, B, .) sequences, then c_n (B, H)
    outs, dims = zip(*[_unfold(t, n, bd) for t, bd in zip(out, (1, 1, 1, 1, 0))])
    return outs, dims


def backward_vmap(fn, info, in_dims, args):
    """RNNLayerBackward's vmap rule over its ``BackwardArgs``."""
    a, d = BackwardArgs(*args), BackwardArgs(*in_dims)
    stacked = a.w_hh.dim() - (d.w_hh is not None) == 3   # members already (nested vmap)
    ensemble = any(dim is not None for dim in (d.w_ih, d.w_hh, d.b_ih, d.b_hh, d.w_hr))
    if ensemble and not stacked and a.groups == 1 and a.w_hr is None and d.batch_sizes is None:
        return _as_members(fn.apply, info, in_dims, args, BACKWARD_TENSORS)
    if stacked or ensemble:
        return _per_member(fn.apply, info, in_dims, args)
    n = info.batch_size
    seq = lambda t, dim: _fold(t, dim, n, 1)  # noqa: E731  (T, B, .) tensors
    row = lambda t, dim: _fold(t, dim, n, 0)  # noqa: E731  (B, .) tensors
    grads = fn.apply(*a._replace(
        batch_sizes=None if a.batch_sizes is None else a.batch_sizes * n, groups=a.groups * n,
        x=seq(a.x, d.x), h0=row(a.h0, d.h0), c0=row(a.c0, d.c0), y=seq(a.y, d.y),
        cs=seq(a.cs, d.cs), saved=seq(a.saved, d.saved), m=seq(a.m, d.m), dy=seq(a.dy, d.dy),
        dcn=row(a.dcn, d.dcn)))
    outs, dims = [], []
    for t, bd in ((grads[0], 1), (grads[1], 0), (grads[2], 0)):   # dx, dh0, dc0
        o, od = _unfold(t, n, bd)
        outs.append(o)
        dims.append(od)
    for t in grads[3:]:  # weight gradients: (groups * n, ...) -> (groups, n, ...)
        if t is None:
            outs.append(None)
            dims.append(None)
        elif a.groups * n == 1:   # one problem in all (jacrev of a scalar): no leading dim
            outs.append(t.unsqueeze(0))
            dims.append(0)
        else:
            outs.append(t.unflatten(0, (a.groups, n)) if a.groups > 1 else t)
            dims.append(1 if a.groups > 1 else 0)
    return tuple(outs), tuple(dims)


# ------------------------------------------------------------------------------ legacy vmap
_UNBATCHED = 999_983  # a batch size no real vmap has (a prime; small enough for numel)


def _legacy_level(t):
    """The innermost legacy-vmap level ``t`` is batched at.  The nesting counter that names it
    is thread-local, and on CUDA the backward runs on autograd's device thread, where it reads
    0: ask the tensor instead.  Removing a level ``t`` is not batched at expands it to the given
    batch size; removing its own level ignores the size."""
    here = torch._C._vmapmode_increment_nesting() - 1
    torch._C._vmapmode_decrement_nesting()
    for level in (here, *range(64, 0, -1)):
        if level > 0 and torch._remove_batch_dim(t, level, _UNBATCHED, 0).shape[0] != _UNBATCHED:
            return level
    raise RuntimeError("fastcells: a legacy-vmap batched tensor with no level between 1 and 64")


def legacy_vmap(rule, args):
    """Run a vmap ``rule`` on legacy-batched arguments.  ``torch.autograd.grad(...,
    is_grads_batched=True)`` (so ``torch.autograd.functional.jacobian(vectorize=True)``) batches
    the backward with torch's older vmap, which calls no ``vmap`` staticmethod: unwrap the
    batched tensors (their vmapped dimension first), apply the rule, wrap the results."""
    level = None
    raw, in_dims, n = [], [], None
    for a in args:
        if isinstance(a, torch.Tensor) and torch._C._functorch.is_legacy_batchedtensor(a):
            level = _legacy_level(a) if level is None else level
            a = torch._remove_batch_dim(a, level, 1, 0)  # the size is ignored for batched ones
            n = a.shape[0]
            in_dims.append(0)
        else:
            in_dims.append(None)
        raw.append(a)
    outs, out_dims = rule(SimpleNamespace(batch_size=n, randomness="error"), tuple(in_dims), *raw)
    return tuple(o if o is None or d is None else torch._add_batch_dim(o, d, level)
                 for o, d in zip(outs, out_dims))
