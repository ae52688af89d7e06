"""The fused recurrent layer as autograd Functions (eager) and as custom ops (torch.compile).

One primitive serves layers and cells: one layer, one direction, whole sequence (a cell is a
one-step layer, which the launcher runs as one fused launch).  A cell in a plain eager call
takes :class:`RNNStep`, the same kernels with a shorter host path (``recurrent_step``).

* Eager calls take :class:`RNNLayer`, a ``torch.autograd.Function``: one autograd node, cached
  kernel launches, and ``vmap`` rules, so ``torch.func`` (grad, vmap, jacrev, reverse-mode
  jacobians) runs through the kernels; its ``jvp`` rule (forward mode: jvp, jacfwd,
  ``torch.autograd.forward_ad``) takes the reference math's tangents.  A
  vmapped layer with shared weights is one batched launch (the vmapped dimension is folded into
  the batch); batched weights (an ensemble) run as stacked members of one layer call, forward
  and backward (every member in the same launches, ``kernels.recurrence``).
* Under ``torch.compile`` the same math is the custom ops ``fastcells::rnn_layer`` and
  ``fastcells::rnn_layer_backward``, with fake implementations: no graph break, no retracing of
  the time loop.

The backward is itself a Function (:class:`RNNLayerBackward`) on the kernels.  A backward that
must be differentiable recomputes the layer with the reference math and differentiates that,
the one place the kernels' wrappers use :mod:`fastcells.reference`: with plain autograd
(``create_graph=True``: gradient penalties, meta-learning) the backward of ``RNNLayer`` and of
``RNNStep`` takes that path (``_layer_backward``), so every order works; under ``torch.func``
the kernels' backward runs, and its own backward (a second order: hessians) is the reference
math's, through ``torch.func.vjp``.
"""
from types import SimpleNamespace
from typing import List, Optional, Tuple

import torch
import torch.autograd.forward_ad as _forward_ad
from torch import Tensor

from . import reference
from .kernels.common import acc_dtype
from .weights import LayerWeights
from .kernels.recurrence import CELLS, layer_backward_steps, layer_forward, layer_grads


def _none(t):
    # the 1-D empty placeholder of an absent buffer (a real one with B = 0 is 2-D or more, and
    # kept)
    return None if t is None or t.numel() == 0 and t.dim() == 1 else t


def _or_empty(t, like):
    return t if t is not None else like.new_empty(0)


def _forward(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes):
    """(y, cs, saved, m), None where absent (the eager Function returns them so)."""
    return layer_forward(mode, x, h0, c0, (w_ih, w_hh, b_ih, b_hh, w_hr), batch_sizes)


def _backward(mode, batch_sizes, needs, groups, x, h0, c0, w_ih, w_hh, b_ih, w_hr, y, cs,
              saved, m, dy, dcn):
    """[dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr] on the kernels (None where absent).
    ``needs``: which of them are wanted, in that order (an input that needs no gradient costs
    no GEMM: the initial state of most layers is zeros; a frozen layer's weights)."""
    dgx, dgh, carry, dc, dhs = layer_backward_steps(
        mode, w_hh, h0, c0, y, _none(cs), _none(saved), _none(m), batch_sizes, dy, dcn, w_hr)
    dx, dh0, dw_ih, dw_hh, db_ih, db_hh, dw_hr = layer_grads(
        x, w_ih, w_hh, h0, y, _none(m), dgx, dgh, carry, dhs, b_ih is not None, needs, groups)
    dc0 = None if dc is None or not needs[2] else dc if dc.dtype == x.dtype else dc.to(x.dtype)
    return [dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr]


def _backward_of(args):
    """``_backward`` on RNNLayerBackward's arguments (mode, batch_sizes, needs, groups, x, h0,
    c0, w_ih, w_hh, b_ih, b_hh, w_hr, y, cs, saved, m, dy, dcn)."""
    (mode, batch_sizes, needs, groups, x, h0, c0, w_ih, w_hh, b_ih, _, w_hr, y, cs, saved, m,
     dy, dcn) = args
    return _backward(mode, batch_sizes, needs, groups, x, h0, c0, w_ih, w_hh, b_ih, w_hr, y, cs,
                     saved, m, dy, dcn)


def _unaliased(grads):
    """The gradients with db_hh its own tensor where it is db_ih's (one bias sum serves both):
    what torch.func hands a user, or a custom op returns, must not alias (an in-place clip of
    two .grad fields sharing storage would scale it twice)."""
    if grads[6] is not None and grads[6] is grads[5]:
        grads[6] = grads[5].clone()
    return grads


def _each_member(fn, tensors, M):
    """``fn(*tensors)`` for each of M stacked members (every tensor indexed on its leading
    dimension), the results stacked: the reference math and the torch.func paths take the
    members of a fused-directions layer one by one."""
    outs = [fn(*[None if t is None else t[k] for t in tensors]) for k in range(M)]
    return [None if o[0] is None else torch.stack(o) for o in zip(*outs)]


def _reference_layer(mode, x, h0, c0, weights, batch_sizes):
    """reference.layer, member by member for stacked members: (y, h_n, c_n)."""
    if weights[1].dim() == 2:
        return reference.layer(mode, x, h0, c0, weights, batch_sizes)

    def one(x, h0, c0, *w):
        return reference.layer(mode, x, h0, c0, LayerWeights(*w), batch_sizes)
    return _each_member(one, (x, h0, c0, *weights), x.shape[0])


def _reference_grads(mode, batch_sizes, inputs, dy, dcn):
    """First-order gradients of the layer as a differentiable function: the reference math
    recomputed and differentiated with ``create_graph``.  Entries for inputs that do not
    require grad are None."""
    if inputs[4].dim() == 3:   # stacked members

        def one(dy, dcn, *ins):
            return _reference_grads(mode, batch_sizes, ins, dy, dcn)
        return _each_member(one, (dy, dcn, *inputs), inputs[4].shape[0])
    wanted = [t is not None and t.requires_grad for t in inputs]
    with torch.enable_grad():
        # each slot its own node: one tensor passed twice (a cell's h as both h and c) gets
        # each slot's gradient, not the sum of both in each
        inputs = [t.view_as(t) if w else t for t, w in zip(inputs, wanted)]
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = inputs
        y, _, cn = reference.layer(mode, x, h0, c0, LayerWeights(w_ih, w_hh, b_ih, b_hh, w_hr),
                                   batch_sizes)
        outs, gouts = [y], [dy]
        if cn is not None and dcn is not None:
            outs.append(cn)
            gouts.append(dcn.to(cn.dtype))  # the kernels keep c (and dL/dc) in fp32
        srcs = [t for t, w in zip(inputs, wanted) if w]
        got = iter(torch.autograd.grad(outs, srcs, gouts, create_graph=True, allow_unused=True)
                   if srcs else ())
    return [next(got) if w else None for w in wanted]


def _placed(full, ins):
    """reference.layer's arguments (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr) with the present
    ones taken from ``ins`` in order."""
    ins = iter(ins)
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = [None if t is None else next(ins) for t in full]
    return x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr


# ------------------------------------------------------------------------------ vmap helpers
def _fold(t, dim, n, batch_dim):
    """Fold the vmapped dimension ``dim`` of ``t`` (None: unbatched, expanded) into its batch
    dimension: row b * n + k of the result is row b of member k."""
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
    batch_dim + 1 (empty placeholders stay unbatched)."""
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
    for i in slots:
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


def _legacy_batched(*tensors):
    return any(t is not None and torch._C._functorch.is_legacy_batchedtensor(t) for t in tensors)


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


def _legacy_vmap(rule, args):
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


# ------------------------------------------------------------------------- eager Functions
_unwrap_if_dead = torch._C._functorch.unwrap_if_dead


def _forward_levels():
    """How many forward-mode levels are active: torch.func's jvp transforms (each enters a
    dual level of its own), else torch.autograd.forward_ad's dual level (which cannot nest)."""
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters
    from torch._C._functorch import TransformType
    jvps = sum(i.key() == TransformType.Jvp for i in retrieve_all_functorch_interpreters())
    return jvps or int(_forward_ad._current_level >= 0)


def _check_forward_order():
    # torch does not pass an outer jvp level's tangents through a Function's own jvp rule:
    # a second forward order would come out zero, silently
    if _forward_levels() > 1:
        raise RuntimeError("fastcells: nested forward mode (jvp of jvp, jacfwd of jacfwd or of a "
                           "hessian) is not supported on the triton backend; use the "
                           "reference backend, or reverse mode for the outer order")


def _jvp_of(fn, primals, tangents):
    """The tangents of ``fn``'s outputs at ``primals`` along ``tangents`` (None: zero), as the
    vjp of its (linear) pullback u -> J^T u: reverse mode only, so it also runs inside
    torch.autograd.forward_ad's dual level, which cannot nest another."""
    outs, pullback = torch.func.vjp(fn, *primals)
    _, pullback_of_pullback = torch.func.vjp(pullback, tuple(torch.zeros_like(o) for o in outs))
    (out_t,) = pullback_of_pullback(tuple(torch.zeros_like(p) if t is None else t
                                          for p, t in zip(primals, tangents)))
    return out_t


def _live(args):
    """``args`` with every dead torch.func wrapper (a tensor that escaped a transform, e.g. kept
    in a list inside ``grad``) unwrapped, as torch's ``Function.apply`` does: the kernels need
    the storage under it."""
    return [_unwrap_if_dead(a) if isinstance(a, Tensor) else a for a in args]


class _Function(torch.autograd.Function):
    """An autograd Function whose eager call skips what torch's ``apply`` does for functorch on
    every call (for a Function with ``setup_context``, binding the arguments to ``forward``'s
    signature: tens of microseconds) but unwrapping escaped tensors (``_live``); under a
    torch.func transform it takes torch's own path, which calls the ``vmap`` rules."""

    @classmethod
    def apply(cls, *args):
        if torch._C._are_functorch_transforms_active():
            return super().apply(*args)
        return super(torch.autograd.function._SingleLevelFunction, cls).apply(*_live(args))


def _layer_backward(mode, batch_sizes, needs, inputs, buffers, dy, dcn):
    """The layer's gradients [dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr] from its
    ``inputs`` (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr) and forward ``buffers`` (y, cs, saved,
    m), whichever way the backward is being run; ``needs``: which gradients are wanted
    (``ctx.needs_input_grad`` of the inputs, in that order)."""
    if torch.is_grad_enabled() and not torch._C._are_functorch_transforms_active():
        # create_graph=True (gradient penalties, meta-learning): gradients that are
        # themselves differentiable, to any order, from the reference math.
        return _reference_grads(mode, batch_sizes, inputs, dy, dcn)
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = inputs
    args = (mode, batch_sizes, needs, 1, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, *buffers,
            dy, dcn)
    if _legacy_batched(dy, dcn):
        return _legacy_vmap(RNNLayerBackward.vmap, args)
    if torch._C._are_functorch_transforms_active() or _forward_ad._current_level >= 0:
        # its vmap rule, its torch.func backward; its jvp rule (forward over reverse)
        return RNNLayerBackward.apply(*args)
    # a plain backward records nothing: the Function around it would only cost time
    return _backward_of(args)


class RNNLayer(_Function):
    """(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes) -> (y, cs, saved, m, c_n).

    c_n is the LSTM's final cell state in x's dtype, its own tensor, for T > 1 (its gradient
    then arrives as is; a select of cs would fill a T x B x H zero gradient to carry it); for a
    single step c_n is a view of cs (``recurrent_layer``) and this is None, as for the GRU/RNN."""

    @staticmethod
    def forward(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes):
        y, cs, saved, m = _forward(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes)
        cn = None
        if c0 is not None and x.shape[-3] > 1:
            cn = cs.select(-3, -1).to(x.dtype, copy=True)
        return y, cs, saved, m, cn

    @staticmethod
    def setup_context(ctx, inputs, output):
        mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes = inputs
        y, cs, saved, m, cn = output
        ctx.mode, ctx.batch_sizes = mode, batch_sizes
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y, cs, saved, m)
        ctx.in_transform = torch._C._are_functorch_transforms_active()
        if ctx.in_transform or _forward_ad._current_level >= 0:   # forward mode may follow
            _check_forward_order()
            ctx.save_for_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
        ctx.mark_non_differentiable(*[t for t in (saved, m, None if cn is None else cs)
                                      if t is not None])
        # Outputs nobody differentiated (the gates, an unused c_n) give None, not a
        # layer-sized zero tensor allocated and filled by autograd for nothing.
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, dy, dcs, _dsaved, _dm, dcn):
        saved_tensors = ctx.saved_tensors
        if ctx.in_transform:
            # A pullback run after its transform ended (torch.func.vjp's, under plain autograd
            # or another transform): what was saved are that transform's wrappers, now dead;
            # the gradients are the tensors' under them, differentiable where those are.
            saved_tensors = _live(saved_tensors)
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y, cs, saved, m = saved_tensors
        if dcn is not None:   # the kernels keep c and dL/dc in the accumulation dtype
            dcn = dcn.to(cs.dtype)
        elif c0 is not None and dcs is not None:   # a single step: c_n is a view of cs
            dcn = dcs.select(-3, -1)
        if dy is None:   # only c_n was used
            dy = torch.zeros_like(y)
        dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr = _layer_backward(
            ctx.mode, ctx.batch_sizes, ctx.needs_input_grad[1:9],
            (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr), (y, cs, saved, m), dy, dcn)
        return None, dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr, None

    @staticmethod
    def jvp(ctx, _mode, *tangents):
        """Forward mode (torch.func.jvp, jacfwd, torch.autograd.forward_ad): the reference
        math's jvp at the saved inputs, the tangents of y and of the final cell state (correct,
        not fast: the layer is recomputed)."""
        primals = ctx.saved_tensors
        present = [i for i, p in enumerate(primals) if p is not None]

        def layer(*ins):
            x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = _placed(primals, ins)
            y, _, cn = _reference_layer(ctx.mode, x, h0, c0,
                                        LayerWeights(w_ih, w_hh, b_ih, b_hh, w_hr),
                                        ctx.batch_sizes)
            return (y, cn) if cn is not None else (y,)
        out_t = _jvp_of(layer, [primals[i] for i in present], [tangents[i] for i in present])
        y_t = out_t[0]
        cn_t = out_t[1] if len(out_t) > 1 else None
        if cn_t is not None and y_t.shape[-3] == 1:   # one step: c_n is a view of cs
            return y_t, cn_t.unsqueeze(-3), None, None, None
        return y_t, None, None, None, cn_t

    @staticmethod
    def vmap(info, in_dims, mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes):
        args = (mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes)
        stacked = w_hh.dim() - (in_dims[5] is not None) == 3   # members already (nested vmap)
        if stacked or in_dims[9] is not None or (w_hr is not None
                                                  and in_dims[4:9] != (None,) * 5):
            # stacked members, batched lengths, or a projected ensemble: member by member
            return _per_member(RNNLayer.apply, info, in_dims, args)
        if any(d is not None for d in in_dims[4:9]):
            return _as_members(RNNLayer.apply, info, in_dims, args, range(1, 9))
        n = info.batch_size
        out = RNNLayer.apply(mode, _fold(x, in_dims[1], n, 1), _fold(h0, in_dims[2], n, 0),
                             _fold(c0, in_dims[3], n, 0), w_ih, w_hh, b_ih, b_hh, w_hr,
                             None if batch_sizes is None else batch_sizes * n)
        # the batch dimension of each output: (T, B, .) sequences, then c_n (B, H)
        outs, dims = zip(*[_unfold(t, n, bd) for t, bd in zip(out, (1, 1, 1, 1, 0))])
        return outs, dims


class RNNStep(_Function):
    """(mode, x (B, I), h, c, w_ih, w_hh, b_ih, b_hh) -> (h', c'): one step (a cell) in a plain
    eager call, c' None but for the LSTM.

    The same kernels as a one-step :class:`RNNLayer`, with a shorter host path: the outputs are
    the cell's own (B, H) tensors (no time dimension to add and take off around the node), and
    the gates the backward reads are saved, not returned.  It has no vmap or jvp rule: under
    torch.func, torch.compile, tracing and forward_ad a cell is a one-step RNNLayer
    (``recurrent_step``)."""

    @staticmethod
    def forward(ctx, mode, x, h, c, w_ih, w_hh, b_ih, b_hh):
        hn, cn, saved, _ = _forward(mode, x, h, c, w_ih, w_hh, b_ih, b_hh, None, None)
        ctx.mode = mode
        ctx.save_for_backward(x, h, c, w_ih, w_hh, b_ih, b_hh, hn, cn, saved)
        ctx.set_materialize_grads(False)
        return hn, cn

    @staticmethod
    def backward(ctx, dh, dc):
        x, h, c, w_ih, w_hh, b_ih, b_hh, hn, cn, saved = ctx.saved_tensors
        dy = torch.zeros_like(hn) if dh is None else dh   # only c' was used
        if (torch.is_grad_enabled() or _legacy_batched(dy, dc)
                or torch._C._are_functorch_transforms_active()
                or _forward_ad._current_level >= 0):
            # create_graph, a batched backward (jacobian(vectorize=True)) or tangents (forward
            # over reverse): the one-step layer's way, with the time dimension
            step = lambda t: None if t is None else t[None]  # noqa: E731
            grads = list(_layer_backward(ctx.mode, None, (*ctx.needs_input_grad[1:8], False),
                                         (step(x), h, c, w_ih, w_hh, b_ih, b_hh, None),
                                         (step(hn), step(cn), step(saved), None), step(dy), dc))
            grads[0] = None if grads[0] is None else grads[0][0]
        else:   # the kernels take the step without its time dimension
            grads = _backward(ctx.mode, None, (*ctx.needs_input_grad[1:8], False), 1, x, h, c,
                              w_ih, w_hh, b_ih, None, hn, cn, saved, None, dy, dc)
        dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, _ = grads
        return None, dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh


class RNNLayerBackward(_Function):
    """The layer's gradients on the kernels: -> [dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr].
    ``needs``: which gradients are wanted.  ``groups`` > 1: the batch holds that many
    interleaved problems (a folded vmap), and each
    weight gradient gets a leading dimension of that size."""

    @staticmethod
    def forward(mode, batch_sizes, needs, groups, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                y, cs, saved, m, dy, dcn):
        return tuple(_unaliased(_backward_of((mode, batch_sizes, needs, groups, x, h0, c0, w_ih,
                                              w_hh, b_ih, b_hh, w_hr, y, cs, saved, m, dy, dcn))))

    @staticmethod
    def setup_context(ctx, inputs, output):
        mode, batch_sizes, _, groups, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = inputs[:12]
        dy, dcn = inputs[16:]
        ctx.mode, ctx.batch_sizes, ctx.groups = mode, batch_sizes, groups
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, dy, dcn)
        if torch._C._are_functorch_transforms_active() or _forward_ad._current_level >= 0:
            _check_forward_order()
            ctx.save_for_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, dy, dcn)
            ctx.out_present = [o is not None for o in output]

    @staticmethod
    def _first_order(ctx):
        """(the saved tensors present, their indices, how many are the layer's inputs, and
        first_order(*them)): the first-order gradients of those inputs as a function of them,
        dy and dcn, written with ``torch.func.vjp`` over the reference math."""
        if ctx.groups != 1:
            raise RuntimeError("fastcells: differentiating a vmapped layer's backward is not "
                               "supported (use the reference backend for that)")
        saved = ctx.saved_tensors
        present = [i for i, t in enumerate(saved) if t is not None]
        n_in = sum(1 for i in present if i < 8)  # the layer's inputs; then dy (and dcn)

        def first_order(*args):
            full = [None] * 10
            for i, a in zip(present, args):
                full[i] = a
            dy, dcn = full[8], full[9]

            def layer(*ins):
                x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = _placed(full[:8], ins)
                y, _, cn = _reference_layer(ctx.mode, x, h0, c0,
                                            LayerWeights(w_ih, w_hh, b_ih, b_hh, w_hr),
                                            ctx.batch_sizes)
                return (y, cn) if dcn is not None else (y,)
            _, pullback = torch.func.vjp(layer, *args[:n_in])
            return pullback((dy, dcn.to(dy.dtype)) if dcn is not None else (dy,))
        return [saved[i] for i in present], present, n_in, first_order

    @staticmethod
    def backward(ctx, *ggrads):
        """Second order under torch.func (plain autograd's create_graph=True takes the
        reference path in RNNLayer.backward instead, which serves every order): the vjp of
        the first-order gradients (``_first_order``) against ``ggrads``."""
        args, present, n_in, first_order = RNNLayerBackward._first_order(ctx)
        firsts, pullback = torch.func.vjp(first_order, *args)
        cot = [ggrads[i] if ggrads[i] is not None else torch.zeros_like(f)
               for i, f in zip(present[:n_in], firsts)]
        got = pullback(tuple(cot))
        res = [None] * 10
        for i, g in zip(present, got):
            res[i] = g
        return (None, None, None, None, *res[:8], None, None, None, None, *res[8:])

    @staticmethod
    def jvp(ctx, _mode, _batch_sizes, _needs, _groups, *tangents):
        """Forward mode over the gradients (jacfwd of jacrev: hessians): the jvp of
        ``_first_order`` as the vjp of its (linear) pullback.  The tangents of the forward's
        buffers (y, cs, saved, m) are not read: the reference math recomputes them from the
        inputs, whose tangents carry theirs."""
        args, present, n_in, first_order = RNNLayerBackward._first_order(ctx)
        tangents = (*tangents[:8], *tangents[12:])   # x ... w_hr, then dy, dcn
        out_t = _jvp_of(first_order, args, [tangents[i] for i in present])
        res = [None] * 8
        for i, t in zip(present[:n_in], out_t):
            res[i] = t if ctx.out_present[i] else None
        return tuple(res)

    @staticmethod
    def vmap(info, in_dims, mode, batch_sizes, needs, groups, x, h0, c0, w_ih, w_hh, b_ih,
             b_hh, w_hr, y, cs, saved, m, dy, dcn):
        args = (mode, batch_sizes, needs, groups, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y,
                cs, saved, m, dy, dcn)
        stacked = w_hh.dim() - (in_dims[8] is not None) == 3   # members already (nested vmap)
        ensemble = any(d is not None for d in in_dims[7:12])
        if ensemble and not stacked and groups == 1 and w_hr is None and in_dims[1] is None:
            return _as_members(RNNLayerBackward.apply, info, in_dims, args, range(4, 18))
        if stacked or ensemble:
            return _per_member(RNNLayerBackward.apply, info, in_dims, args)
        n = info.batch_size
        seq = lambda t, d: _fold(t, d, n, 1)  # noqa: E731  (T, B, .) tensors
        row = lambda t, d: _fold(t, d, n, 0)  # noqa: E731  (B, .) tensors
        d = in_dims
        grads = RNNLayerBackward.apply(
            mode, None if batch_sizes is None else batch_sizes * n, needs, groups * n,
            seq(x, d[4]), row(h0, d[5]), row(c0, d[6]), w_ih, w_hh, b_ih, b_hh, w_hr,
            seq(y, d[12]), seq(cs, d[13]), seq(saved, d[14]), seq(m, d[15]), seq(dy, d[16]),
            row(dcn, d[17]))
        dx, dh0, dc0 = grads[:3]
        outs, dims = [], []
        for t, bd in ((dx, 1), (dh0, 0), (dc0, 0)):
            o, od = (None, None) if t is None else _unfold(t, n, bd)
            outs.append(o)
            dims.append(od)
        for t in grads[3:]:  # weight gradients: (groups * n, ...) -> (groups, n, ...)
            if t is None:
                outs.append(None)
                dims.append(None)
            elif groups * n == 1:   # one problem in all (jacrev of a scalar): no leading dim
                outs.append(t.unsqueeze(0))
                dims.append(0)
            else:
                outs.append(t.unflatten(0, (groups, n)) if groups > 1 else t)
                dims.append(1 if groups > 1 else 0)
        return tuple(outs), tuple(dims)


# ----------------------------------------------------------------- custom ops (torch.compile)
@torch.library.custom_op("fastcells::rnn_layer", mutates_args=())
def rnn_layer(mode: str, x: Tensor, h0: Tensor, c0: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
              b_ih: Optional[Tensor], b_hh: Optional[Tensor], w_hr: Optional[Tensor],
              batch_sizes: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns [y, cs, saved, m] (see kernels.recurrence.layer_forward); absent ones empty."""
    return tuple(_or_empty(t, x) for t in _forward(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                                                    batch_sizes))


@rnn_layer.register_fake
def _(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes):
    spec = CELLS[mode]
    T, B = x.shape[0], x.shape[1]
    GH, K = w_hh.shape
    H = GH // spec.gates
    empty = x.new_empty(0)
    y = x.new_empty(T, B, K)
    cs = (x.new_empty(T, B, H, dtype=x.dtype if T == 1 else acc_dtype(x.dtype))
          if spec.has_cell else empty)
    saved = x.new_empty(T, B, spec.saved * H) if spec.saved else x.new_empty(0)
    m = x.new_empty(T, B, H) if w_hr is not None else x.new_empty(0)
    return y, cs, saved, m


@torch.library.custom_op("fastcells::rnn_layer_backward", mutates_args=())
def rnn_layer_backward(mode: str, x: Tensor, h0: Tensor, c0: Optional[Tensor], w_ih: Tensor,
                       w_hh: Tensor, w_hr: Optional[Tensor], has_bias: bool, y: Tensor,
                       cs: Tensor, saved: Tensor, m: Tensor, batch_sizes: Optional[Tensor],
                       dy: Tensor, dcn: Optional[Tensor], need_dx: bool) -> List[Tensor]:
    """Returns [dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr]; absent ones empty."""
    b_ih = w_hh.new_empty(0) if has_bias else None
    # the schema takes need_dx alone: every other gradient always (its fake returns them)
    grads = _unaliased(_backward(mode, batch_sizes, (need_dx, *(True,) * 7), 1, x, h0, c0, w_ih,
                                 w_hh, b_ih, w_hr, y, cs, saved, m, dy, dcn))
    return [g if g is not None else x.new_empty(0) for g in grads]


@rnn_layer_backward.register_fake
def _(mode, x, h0, c0, w_ih, w_hh, w_hr, has_bias, y, cs, saved, m, batch_sizes, dy, dcn,
      need_dx):
    # the kernels' gradients are contiguous, whatever the inputs' strides (a batch_first x is
    # a transposed view)
    empty = x.new_empty(0)
    GH = w_hh.shape[0]
    like = lambda t: x.new_empty(t.shape)   # noqa: E731
    return [like(x) if need_dx else empty, like(h0), like(c0) if c0 is not None else empty,
            like(w_ih), like(w_hh), x.new_empty(GH) if has_bias else empty,
            x.new_empty(GH) if has_bias else empty, like(w_hr) if w_hr is not None else empty]


def _op_setup_context(ctx, inputs, output):
    mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes = inputs
    ctx.mode, ctx.batch_sizes = mode, batch_sizes
    # Only tensors may be saved (torch.compile checks): remember where the Nones were.
    ctx.present = [t is not None for t in inputs[1:9]]
    ctx.save_for_backward(*[t for t in inputs[1:9] if t is not None], *output)


def _op_backward(ctx, dy, dcs, _dsaved, _dm):
    saved_tensors = iter(ctx.saved_tensors)
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = [next(saved_tensors) if p else None
                                               for p in ctx.present]
    y, cs, saved, m = saved_tensors
    inputs = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
    dy = torch.zeros_like(y) if dy is None else dy
    dcn = dcs[-1].to(x.dtype) if dcs is not None and c0 is not None else None
    if torch.is_grad_enabled():
        grads = _reference_grads(ctx.mode, ctx.batch_sizes, inputs, dy, dcn)
    else:
        grads = rnn_layer_backward(ctx.mode, x, h0, c0, w_ih, w_hh, w_hr, b_ih is not None, y,
                                   cs, saved, m, ctx.batch_sizes, dy, dcn,
                                   ctx.needs_input_grad[1])
        grads = [_none(g) for g in grads]
    dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr = grads
    if c0 is None:
        dc0 = None
    return None, dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr, None


rnn_layer.register_autograd(_op_backward, setup_context=_op_setup_context)


def _needs_grad(tensors):
    if not torch.is_grad_enabled():
        return False
    for t in tensors:
        if t is not None and t.requires_grad:
            return True
    return False


def recurrent_layer(mode, x, h0, c0, weights, batch_sizes=None):
    """One layer, one direction on the fused kernels: returns (y (T, B, K), h_n, c_n or None).
    Eager calls take the autograd Function; torch.compile and torch.jit.trace record the custom
    op (a trace records ops, and the Function's kernels are none).  In eager calls outside
    torch.func, every tensor may carry a leading member dimension M (kernels.recurrence: the
    directions of a layer in the same launches), and so do the results."""
    w_ih, w_hh, b_ih, b_hh, w_hr = weights
    args = (mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes)
    cn = None
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        y, cs, _, _ = torch.ops.fastcells.rnn_layer(*args)
    elif (torch._C._are_functorch_transforms_active() or _needs_grad(args[1:9])
          or _forward_ad._current_level >= 0):   # (inside forward_ad.dual_level: tangents)
        y, cs, _, _, cn = RNNLayer.apply(*args)
    else:  # inference (no_grad, or nothing requires grad): no autograd node to build
        y, cs, _, _ = _forward(*_live(args))
    if x.shape[-3] == 1:  # a view whose backward is a view too (a select's fills zeros)
        cn = None if c0 is None else cs.squeeze(-3)
        return y, y.squeeze(-3), cn if cn is None or cn.dtype == x.dtype else cn.to(x.dtype)
    if c0 is not None and cn is None:
        cn = cs.select(-3, -1)
        if cn.dtype != x.dtype:
            cn = cn.to(x.dtype)
    return y, y.select(-3, -1), cn


def recurrent_step(mode, x, h, c, weights):
    """One step (a cell) on the fused kernels: x (B, I), h (B, K), c (B, H) or None; returns
    (h', c' or None).  Plain eager calls take :class:`RNNStep`; torch.func, torch.compile,
    tracing and forward_ad's dual level take the one-step layer (its vmap and jvp rules, its
    custom op)."""
    w_ih, w_hh, b_ih, b_hh, w_hr = weights
    if w_hr is not None:
        raise ValueError("fastcells: a cell has no projection (w_hr must be None)")
    if (torch._C._are_functorch_transforms_active() or torch.compiler.is_compiling()
            or torch.jit.is_tracing() or _forward_ad._current_level >= 0):
        _, hn, cn = recurrent_layer(mode, x[None], h, c, weights)
        return hn, cn
    if _needs_grad((x, h, c, w_ih, w_hh, b_ih, b_hh)):
        return RNNStep.apply(mode, x, h, c, w_ih, w_hh, b_ih, b_hh)
    hn, cn, _, _ = _forward(*_live((mode, x, h, c, w_ih, w_hh, b_ih, b_hh, None, None)))
    return hn, cn
