"""Gradients of the layer that are themselves differentiable, from the reference math: the one
place the kernels' wrappers use :mod:`fastcells.reference`.

With plain autograd (``create_graph=True``: gradient penalties, meta-learning) a layer's
backward recomputes the layer with the reference math and differentiates that
(:func:`reference_grads`), so every order works.  Under torch.func the kernels' backward runs,
and its own backward and jvp (hessians) are the reference math's, through ``torch.func.vjp``
(:func:`first_order`).  Forward mode over the layer is the reference math's jvp, as the vjp of
its pullback (:func:`jvp_of`).
"""
import torch

from . import reference
from .rnn_args import flat_inputs, inputs_of
from .weights import LayerWeights


def each_member(fn, tensors, M):
    """``fn(*tensors)`` for each of M stacked members (every tensor indexed on its leading
    dimension), the results stacked: the reference math and the torch.func paths take the
    members of a fused-directions layer one by one."""
    outs = [fn(*[None if t is None else t[k] for t in tensors]) for k in range(M)]
    return [None if o[0] is None else torch.stack(o) for o in zip(*outs)]


def reference_layer(cell, inputs):
    """reference.layer on ``inputs`` (``LayerInputs``), member by member for stacked members:
    (y, h_n, c_n)."""
    x, h0, c0, weights, batch_sizes = inputs
    if weights[1].dim() == 2:
        return reference.layer(cell, x, h0, c0, weights, batch_sizes)

    def one(x, h0, c0, *w):
        return reference.layer(cell, x, h0, c0, LayerWeights(*w), batch_sizes)
    return each_member(one, (x, h0, c0, *weights), x.shape[0])


def reference_grads(cell, inputs, dy, dcn):
    """First-order gradients of the layer as a differentiable function: the reference math
    recomputed and differentiated with ``create_graph``.  A list in the order of
    ``flat_inputs``; entries for inputs that do not require grad are None."""
    flat = flat_inputs(inputs)
    if flat[4].dim() == 3:   # stacked members

        def one(dy, dcn, *ins):
            return reference_grads(cell, inputs_of(ins, inputs.batch_sizes), dy, dcn)
        return each_member(one, (dy, dcn, *flat), flat[4].shape[0])
    wanted = [t is not None and t.requires_grad for t in flat]
    with torch.enable_grad():
        # each slot its own node: one tensor passed twice (a cell's h as both h and c) gets
        # each slot's gradient, not the sum of both in each
        flat = [t.view_as(t) if w else t for t, w in zip(flat, wanted)]
        y, _, cn = reference_layer(cell, inputs_of(flat, inputs.batch_sizes))
        outs, gouts = [y], [dy]
        if cn is not None and dcn is not None:
            outs.append(cn)
            gouts.append(dcn.to(cn.dtype))  # the kernels keep c (and dL/dc) in fp32
        srcs = [t for t, w in zip(flat, wanted) if w]
        got = iter(torch.autograd.grad(outs, srcs, gouts, create_graph=True, allow_unused=True)
                   if srcs else ())
    return [next(got) if w else None for w in wanted]


def placed(full, ins):
    """``full`` (a sequence with None where absent) with the present entries taken from
    ``ins`` in order."""
    ins = iter(ins)
    return [None if t is None else next(ins) for t in full]


def jvp_of(fn, primals, tangents):
    """The tangents of ``fn``'s outputs at ``primals`` along ``tangents`` (None: zero), as the
    vjp of its (linear) pullback u -> J^T u: reverse mode only, so it also runs inside
    torch.autograd.forward_ad's dual level, which cannot nest another."""
    outs, pullback = torch.func.vjp(fn, *primals)
    _, pullback_of_pullback = torch.func.vjp(pullback, tuple(torch.zeros_like(o) for o in outs))
    (out_t,) = pullback_of_pullback(tuple(torch.zeros_like(p) if t is None else t
                                          for p, t in zip(primals, tangents)))
    return out_t


def layer_tangents(cell, primals, tangents, batch_sizes):
    """The jvp of the layer (y, and c_n where present) at ``primals`` (the 8 flat inputs, None
    where absent) along ``tangents``: the reference math's."""
    present = [i for i, p in enumerate(primals) if p is not None]

    def layer(*ins):
        y, _, cn = reference_layer(cell, inputs_of(placed(primals, ins), batch_sizes))
        return (y, cn) if cn is not None else (y,)
    return jvp_of(layer, [primals[i] for i in present], [tangents[i] for i in present])


def first_order(cell, batch_sizes, saved):
    """(the saved tensors present, their indices, how many are the layer's inputs, and
    fn(*them)): the first-order gradients of those inputs as a function of them, dy and dcn,
    written with ``torch.func.vjp`` over the reference math.  ``saved``: the 8 flat inputs, dy,
    dcn (None where absent)."""
    present = [i for i, t in enumerate(saved) if t is not None]
    n_in = sum(1 for i in present if i < 8)  # the layer's inputs; then dy (and dcn)

    def fn(*args):
        full = placed(saved, args)
        dy, dcn = full[8], full[9]

        def layer(*ins):
            y, _, cn = reference_layer(cell, inputs_of(placed(full[:8], ins), batch_sizes))
            return (y, cn) if dcn is not None else (y,)
        _, pullback = torch.func.vjp(layer, *args[:n_in])
        return pullback((dy, dcn.to(dy.dtype)) if dcn is not None else (dy,))
    return [saved[i] for i in present], present, n_in, fn
