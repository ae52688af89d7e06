"""The layer on the kernels as autograd Functions (eager calls and torch.func).

:class:`RNNLayer` is one layer, one direction, whole sequence: one autograd node, cached kernel
launches.  Its backward is itself a Function, :class:`RNNLayerBackward`, so that torch.func
can batch it (vmap), differentiate it (hessians) and push tangents through it.  A cell in a
plain eager call takes :class:`RNNStep`, the same kernels with a shorter host path.  The vmap
rules are in :mod:`fastcells.rnn_func`, the differentiable (reference-math) gradients in
:mod:`fastcells.rnn_higher`.
"""
import torch
import torch.autograd.forward_ad as _forward_ad
from torch import Tensor

from . import route as routes
from .kernels.recurrence import layer_backward_steps, layer_forward, layer_grads
from .rnn_args import INPUTS, BackwardArgs, LayerArgs, flat_inputs, needs_of, unaliased
from .rnn_func import backward_vmap, layer_vmap, legacy_vmap
from .rnn_higher import first_order, jvp_of, layer_tangents, reference_grads
from .weights import LayerBuffers, LayerGrads, LayerInputs

_unwrap_if_dead = torch._C._functorch.unwrap_if_dead


def live(args):
    """``args`` with every dead torch.func wrapper (a tensor that escaped a transform, e.g. kept
    in a list inside ``grad``) unwrapped, as torch's ``Function.apply`` does: the kernels need
    the storage under it."""
    return [_unwrap_if_dead(a) if isinstance(a, Tensor) else a for a in args]


def kernel_grads(kern, inputs, buffers, dout, needs, groups=1):
    """The layer's gradients (``LayerGrads``) on the cell's kernels ``kern``, from its
    ``inputs``, forward ``buffers`` and output gradients ``dout`` = (dy, dcn)."""
    steps = layer_backward_steps(kern, inputs, buffers, *dout)
    return layer_grads(inputs, buffers, steps, needs, groups)


def kernel_backward(args):
    """:func:`kernel_grads` from the layer's ``BackwardArgs``."""
    return kernel_grads(args.cell.kernels, args.inputs(), args.buffers(), (args.dy, args.dcn),
                        args.needs, args.groups)


def layer_backward(route, cell, needs, inputs, buffers, dy, dcn):
    """The layer's gradients (``LayerGrads``) from its ``inputs`` and forward ``buffers``, the
    way the backward's ``route`` (fastcells.route.backward) says; ``needs``: which are wanted."""
    if route == routes.DIFFERENTIABLE:
        # create_graph=True (gradient penalties, meta-learning): gradients that are
        # themselves differentiable, to any order, from the reference math.
        return LayerGrads(*reference_grads(cell, inputs, dy, dcn))
    if route == routes.PLAIN:
        # a plain backward records nothing: the Function around it would only cost time
        return kernel_grads(cell.kernels, inputs, buffers, (dy, dcn), needs)
    args = BackwardArgs.of(cell, needs, inputs, buffers, dy, dcn)
    if route == routes.LEGACY_VMAP:
        return LayerGrads(*legacy_vmap(RNNLayerBackward.vmap, args))
    # its vmap rule, its torch.func backward; its jvp rule (forward over reverse)
    return LayerGrads(*RNNLayerBackward.apply(*args))


def _forward_levels():
    """How many forward-mode levels are active: torch.func's jvp transforms (each enters a
    dual level of its own), else torch.autograd.forward_ad's dual level (which cannot nest)."""
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters
    from torch._C._functorch import TransformType
    jvps = sum(i.key() == TransformType.Jvp for i in retrieve_all_functorch_interpreters())
    return jvps or int(_forward_ad._current_level >= 0)


def _recorded_for_forward_mode(ctx, tensors):
    """In a transform or a dual level (the Function's own context, which its vmap rules can
    enter below the call's): keep what a jvp rule reads.  torch does not pass an outer jvp
    level's tangents through a Function's own jvp rule: a second forward order would come out
    zero, silently, so it raises."""
    if _forward_levels() > 1:
        raise RuntimeError("fastcells: nested forward mode (jvp of jvp, jacfwd of jacfwd or of a "
                           "hessian) is not supported on the triton backend; use the "
                           "reference backend, or reverse mode for the outer order")
    ctx.save_for_forward(*tensors)


class _Function(torch.autograd.Function):
    """An autograd Function whose eager call skips what torch's ``apply`` does for functorch on
    every call (for a Function with ``setup_context``, binding the arguments to ``forward``'s
    signature: tens of microseconds) but unwrapping escaped tensors (``live``); under a
    torch.func transform it takes torch's own path, which calls the ``vmap`` rules."""

    @classmethod
    def apply(cls, *args):
        if torch._C._are_functorch_transforms_active():
            return super().apply(*args)
        return super(torch.autograd.function._SingleLevelFunction, cls).apply(*live(args))


class RNNLayer(_Function):
    """``LayerArgs`` -> (y, cs, saved, m, c_n): the ``LayerBuffers`` and c_n.

    c_n is the LSTM's final cell state in x's dtype, its own tensor, for T > 1 (its gradient
    then arrives as is; a select of cs would fill a T x B x H zero gradient to carry it); for a
    single step c_n is a view of cs (``rnn_ops.run_layer``) and this is None, as for the GRU
    and the RNN."""

    @staticmethod
    def forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes):   # LayerArgs
        # (the weights as a plain sequence in LayerWeights' order, which the launchers take)
        y, cs, saved, m = layer_forward(
            cell.kernels, LayerInputs(x, h0, c0, (w_ih, w_hh, b_ih, b_hh, w_hr), batch_sizes))
        cn = None
        if c0 is not None and x.shape[-3] > 1:
            cn = cs.select(-3, -1).to(x.dtype, copy=True)
        return y, cs, saved, m, cn

    @staticmethod
    def setup_context(ctx, inputs, output):
        y, cs, saved, m, cn = output
        ctx.cell, ctx.batch_sizes = inputs[0], inputs[-1]   # LayerArgs' cell, batch_sizes
        ctx.save_for_backward(*inputs[INPUTS], y, cs, saved, m)
        ctx.in_transform = torch._C._are_functorch_transforms_active()
        if ctx.in_transform or _forward_ad._current_level >= 0:   # forward mode may follow
            _recorded_for_forward_mode(ctx, inputs[INPUTS])
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
            saved_tensors = live(saved_tensors)
        x, h0, c0, *w, y, cs, saved, m = saved_tensors
        inputs = LayerInputs(x, h0, c0, w, ctx.batch_sizes)   # (w in LayerWeights' order)
        buffers = LayerBuffers(y, cs, saved, m)
        if dcn is not None:   # the kernels keep c and dL/dc in the accumulation dtype
            dcn = dcn.to(buffers.cs.dtype)
        elif inputs.c0 is not None and dcs is not None:   # a single step: c_n is a view of cs
            dcn = dcs.select(-3, -1)
        if dy is None:   # only c_n was used
            dy = torch.zeros_like(buffers.y)
        grads = layer_backward(routes.backward(dy, dcn), ctx.cell,
                               needs_of(ctx.needs_input_grad, LayerArgs), inputs, buffers, dy,
                               dcn)
        return (None, *grads, None)   # LayerArgs' positions

    @staticmethod
    def jvp(ctx, *tangents):
        """Forward mode (torch.func.jvp, jacfwd, torch.autograd.forward_ad): the reference
        math's jvp at the saved inputs, the tangents of y and of the final cell state (correct,
        not fast: the layer is recomputed)."""
        t = LayerArgs(*tangents)
        out_t = layer_tangents(ctx.cell, ctx.saved_tensors, t[INPUTS], ctx.batch_sizes)
        y_t = out_t[0]
        cn_t = out_t[1] if len(out_t) > 1 else None
        if cn_t is not None and y_t.shape[-3] == 1:   # one step: c_n is a view of cs
            return y_t, cn_t.unsqueeze(-3), None, None, None
        return y_t, None, None, None, cn_t

    @staticmethod
    def vmap(info, in_dims, *args):
        return layer_vmap(RNNLayer, info, in_dims, args)


class RNNStep(_Function):
    """(cell, x (B, I), h, c, w_ih, w_hh, b_ih, b_hh) -> (h', c'): one step (a cell) in a plain
    eager call, c' None but for the LSTM.

    The same kernels as a one-step :class:`RNNLayer`, with a shorter host path: the outputs are
    the cell's own (B, H) tensors (no time dimension to add and take off around the node), and
    the gates the backward reads are saved, not returned.  It has no vmap or jvp rule: under
    torch.func, torch.compile, tracing and forward_ad a cell is a one-step RNNLayer
    (``rnn_ops.run_step``)."""

    @staticmethod
    def forward(ctx, cell, x, h, c, w_ih, w_hh, b_ih, b_hh):
        # (the weights as a plain sequence in LayerWeights' order, which the launchers take)
        hn, cn, saved, _ = layer_forward(
            cell.kernels, LayerInputs(x, h, c, (w_ih, w_hh, b_ih, b_hh, None)))
        ctx.cell = cell
        ctx.save_for_backward(x, h, c, w_ih, w_hh, b_ih, b_hh, hn, cn, saved)
        ctx.set_materialize_grads(False)
        return hn, cn

    @staticmethod
    def backward(ctx, dh, dc):
        x, h, c, w_ih, w_hh, b_ih, b_hh, hn, cn, saved = ctx.saved_tensors
        dy = torch.zeros_like(hn) if dh is None else dh   # only c' was used
        # the Function's inputs are (cell, x, h, c, w_ih, w_hh, b_ih, b_hh): no w_hr
        needs = LayerGrads(*ctx.needs_input_grad[1:], False)
        weights = (w_ih, w_hh, b_ih, b_hh, None)   # in LayerWeights' order
        route = routes.backward(dy, dc)
        if route == routes.PLAIN:   # the kernels take the step without its time dimension
            grads = kernel_grads(ctx.cell.kernels, LayerInputs(x, h, c, weights),
                                 LayerBuffers(hn, cn, saved, None), (dy, dc), needs)
        else:
            # create_graph, a batched backward (jacobian(vectorize=True)) or tangents (forward
            # over reverse): the one-step layer's way, with the time dimension
            step = lambda t: None if t is None else t[None]  # noqa: E731
            grads = layer_backward(route, ctx.cell, needs, LayerInputs(step(x), h, c, weights),
                                   LayerBuffers(step(hn), step(cn), step(saved), None), step(dy),
                                   dc)
            grads = grads._replace(dx=None if grads.dx is None else grads.dx[0])
        return (None, grads.dx, grads.dh0, grads.dc0, grads.dw_ih, grads.dw_hh, grads.db_ih,
                grads.db_hh)


class RNNLayerBackward(_Function):
    """``BackwardArgs`` -> ``LayerGrads``: the layer's gradients on the kernels.  With
    ``groups`` > 1 each weight gradient gets a leading dimension of that size (a folded vmap)."""

    @staticmethod
    def forward(*args):
        return tuple(unaliased(kernel_backward(BackwardArgs(*args))))

    @staticmethod
    def setup_context(ctx, inputs, output):
        a = BackwardArgs(*inputs)
        ctx.cell, ctx.batch_sizes, ctx.groups = a.cell, a.batch_sizes, a.groups
        tensors = (*flat_inputs(a.inputs()), a.dy, a.dcn)
        ctx.save_for_backward(*tensors)
        if torch._C._are_functorch_transforms_active() or _forward_ad._current_level >= 0:
            _recorded_for_forward_mode(ctx, tensors)
            ctx.out_present = [o is not None for o in output]

    @staticmethod
    def _first_order(ctx):
        """``rnn_higher.first_order`` of the saved tensors."""
        if ctx.groups != 1:
            raise RuntimeError("fastcells: differentiating a vmapped layer's backward is not "
                               "supported (use the reference backend for that)")
        return first_order(ctx.cell, ctx.batch_sizes, ctx.saved_tensors)

    @staticmethod
    def backward(ctx, *ggrads):
        """Second order under torch.func (plain autograd's create_graph=True takes the
        reference path in RNNLayer.backward instead, which serves every order): the vjp of
        the first-order gradients against ``ggrads``."""
        args, present, n_in, fn = RNNLayerBackward._first_order(ctx)
        firsts, pullback = torch.func.vjp(fn, *args)
        cot = [ggrads[i] if ggrads[i] is not None else torch.zeros_like(f)
               for i, f in zip(present[:n_in], firsts)]
        got = pullback(tuple(cot))
        res = [None] * 10   # the saved tensors' gradients: the 8 inputs, dy, dcn
        for i, g in zip(present, got):
            res[i] = g
        # BackwardArgs' positions: (cell, batch_sizes, needs, groups), the inputs, the buffers,
        # dy, dcn
        return (None,) * 4 + tuple(res[:8]) + (None,) * 4 + tuple(res[8:])

    @staticmethod
    def jvp(ctx, *tangents):
        """Forward mode over the gradients (jacfwd of jacrev: hessians): the jvp of the
        first-order gradients as the vjp of their (linear) pullback.  The tangents of the
        forward's buffers (y, cs, saved, m) are not read: the reference math recomputes them
        from the inputs, whose tangents carry theirs."""
        args, present, n_in, fn = RNNLayerBackward._first_order(ctx)
        t = BackwardArgs(*tangents)
        t = (*flat_inputs(t.inputs()), t.dy, t.dcn)
        out_t = jvp_of(fn, args, [t[i] for i in present])
        res = [None] * 8
        for i, o in zip(present[:n_in], out_t):
            res[i] = o if ctx.out_present[i] else None
        return tuple(res)

    @staticmethod
    def vmap(info, in_dims, *args):
        return backward_vmap(RNNLayerBackward, info, in_dims, args)
