"""The fused recurrent layer as PyTorch custom ops with registered autograd (no modules here).

``fastcells::rnn_layer`` runs one layer, one direction, whole sequence on the Triton kernels;
``fastcells::rnn_layer_backward`` its gradients.  Being custom ops with fake (meta)
implementations, they are opaque to torch.compile: no graph break, no retracing of the time loop.

Autograd: the backward op computes every gradient on the fused kernels.  A backward that must
itself be differentiable (``create_graph=True``: gradient penalties, meta-learning) instead
recomputes the layer with the reference math and differentiates that, so every order works.
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import reference
from .kernels.common import acc_dtype
from .kernels.recurrence import CELLS, layer_backward, layer_forward


def _none(t):
    return t if t is not None and t.numel() else None


def _empty(like):
    return like.new_empty(0)


@torch.library.custom_op("fastcells::rnn_layer", mutates_args=())
def rnn_layer(mode: str, x: Tensor, h0: Tensor, c0: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
              b_ih: Optional[Tensor], b_hh: Optional[Tensor], w_hr: Optional[Tensor],
              batch_sizes: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns [hs, cs, saved, m] (see kernels.recurrence.layer_forward); absent ones empty."""
    hs, cs, saved, m = layer_forward(mode, x, w_ih, w_hh, b_ih, b_hh, h0, c0, batch_sizes, w_hr)
    return (hs, cs if cs is not None else _empty(x), saved if saved is not None else _empty(x),
            m if m is not None else _empty(x))


@rnn_layer.register_fake
def _(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes):
    spec = CELLS[mode]
    T, B = x.shape[0], x.shape[1]
    GH, K = w_hh.shape
    H = GH // spec.gates
    hs = x.new_empty(T + 1, B, K)
    cs = x.new_empty(T + 1, B, H, dtype=acc_dtype(x.dtype)) if spec.has_cell else _empty(x)
    saved = x.new_empty(T, B, spec.saved * H) if spec.saved else _empty(x)
    m = x.new_empty(T, B, H) if w_hr is not None else _empty(x)
    return hs, cs, saved, m


@torch.library.custom_op("fastcells::rnn_layer_backward", mutates_args=())
def rnn_layer_backward(mode: str, x: Tensor, w_ih: Tensor, w_hh: Tensor, w_hr: Optional[Tensor],
                       has_bias: bool, hs: Tensor, cs: Tensor, saved: Tensor, m: Tensor,
                       batch_sizes: Optional[Tensor], d_hs: Tensor, dcn: Optional[Tensor],
                       need_dx: bool) -> List[Tensor]:
    """Returns [dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr]; absent ones empty."""
    grads = layer_backward(mode, x, w_ih, w_hh, has_bias, hs, _none(cs), _none(saved), _none(m),
                           batch_sizes, d_hs[1:], None, dcn, w_hr, need_input_grad=need_dx)
    return [g if g is not None else _empty(x) for g in grads]


@rnn_layer_backward.register_fake
def _(mode, x, w_ih, w_hh, w_hr, has_bias, hs, cs, saved, m, batch_sizes, d_hs, dcn, need_dx):
    H = w_hh.shape[0] // CELLS[mode].gates
    B = x.shape[1]
    return [torch.empty_like(x) if need_dx else _empty(x), x.new_empty(B, w_hh.shape[1]),
            x.new_empty(B, H) if CELLS[mode].has_cell else _empty(x), torch.empty_like(w_ih),
            torch.empty_like(w_hh),
            x.new_empty(w_hh.shape[0]) if has_bias else _empty(x),
            x.new_empty(w_hh.shape[0]) if has_bias else _empty(x),
            torch.empty_like(w_hr) if w_hr is not None else _empty(x)]


def _setup_context(ctx, inputs, output):
    mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes = inputs
    ctx.mode = mode
    ctx.batch_sizes = batch_sizes
    # Only tensors may be saved (torch.compile checks): remember where the Nones were.
    ctx.present = [t is not None for t in inputs[1:9]]
    ctx.save_for_backward(*[t for t in inputs[1:9] if t is not None], *output)


def _backward(ctx, d_hs, d_cs, d_saved, d_m):
    saved_tensors = iter(ctx.saved_tensors)
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = [next(saved_tensors) if p else None
                                               for p in ctx.present]
    hs, cs, saved, m = saved_tensors
    inputs = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
    T = x.shape[0]
    d_hs = torch.zeros_like(hs) if d_hs is None else d_hs
    dcn = d_cs[T].to(x.dtype) if d_cs is not None and c0 is not None else None
    if torch.is_grad_enabled():
        grads = _reference_backward(ctx, inputs, d_hs, dcn)
    else:
        grads = rnn_layer_backward(ctx.mode, x, w_ih, w_hh, w_hr, b_ih is not None, hs, cs,
                                   saved, m, ctx.batch_sizes, d_hs, dcn, ctx.needs_input_grad[1])
        grads = [_none(g) for g in grads]
    dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr = grads
    if c0 is None:
        dc0 = None
    return None, dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr, None


def _reference_backward(ctx, inputs, d_hs, dcn):
    """Differentiable gradients: recompute with the reference math, differentiate that."""
    wanted = [t is not None and t.requires_grad for t in inputs]
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = inputs
    with torch.enable_grad():
        y, hn, cn = reference.layer(ctx.mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh,
                                    ctx.batch_sizes, w_hr)
        outs, gouts = [y], [d_hs[1:]]
        if cn is not None and dcn is not None:
            outs.append(cn)
            gouts.append(dcn)
        srcs = [t for t, w in zip(inputs, wanted) if w]
        got = iter(torch.autograd.grad(outs, srcs, gouts, create_graph=True, allow_unused=True)
                   if srcs else ())
    return [next(got) if w else None for w in wanted]


rnn_layer.register_autograd(_backward, setup_context=_setup_context)


def recurrent_layer(mode, x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None,
                    batch_sizes=None):
    """One layer, one direction on the fused kernels: returns (y (T, B, K), h_n, c_n or None)."""
    hs, cs, _, _ = torch.ops.fastcells.rnn_layer(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                                                 batch_sizes)
    y = hs[1:]
    hn = hs[x.shape[0]].clone()
    cn = cs[x.shape[0]].to(x.dtype, copy=True) if c0 is not None else None
    return y, hn, cn
