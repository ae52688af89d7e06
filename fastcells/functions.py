"""Autograd Functions over the Triton launchers (no modules here)."""
import torch

from . import reference
from .kernels.recurrence import layer_backward, layer_forward


class RecurrentLayerFunction(torch.autograd.Function):
    """One recurrent layer, one direction, whole sequence, on the fused Triton kernels.

    Inputs: mode, x (T, B, I), h0 (B, K), c0 (B, H) or None, w_ih, w_hh, b_ih, b_hh (or None),
    w_hr (LSTM projection) or None, batch_sizes (T,) CPU tensor or None.
    Outputs: y (T, B, K), h_n (B, K), c_n (B, H) (the LSTM's; an empty tensor otherwise).

    A backward that must itself be differentiable (create_graph=True) recomputes the layer with
    the reference math and differentiates that, so every order of derivative works.
    """

    @staticmethod
    def forward(ctx, mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes):
        y, kctx = layer_forward(mode, x, w_ih, w_hh, b_ih, b_hh, h0, c0, batch_sizes, w_hr)
        T = x.shape[0]
        hn = kctx["hs"][T].clone()
        cn = kctx["cs"][T].to(x.dtype) if kctx["cs"] is not None else x.new_empty(0)
        ctx.mode = mode
        ctx.kctx = kctx
        ctx.batch_sizes = batch_sizes
        ctx.has_c0 = c0 is not None
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
        return y, hn, cn

    @staticmethod
    def backward(ctx, dy, dhn, dcn):
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = ctx.saved_tensors
        if torch.is_grad_enabled():
            grads = _reference_backward(ctx, (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr), dy, dhn, dcn)
        else:
            grads = _fused_backward(ctx, x, w_ih, w_hh, b_ih, w_hr, dy, dhn, dcn)
        dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr = grads
        return None, dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr, None


def _fused_backward(ctx, x, w_ih, w_hh, b_ih, w_hr, dy, dhn, dcn):
    return layer_backward(
        ctx.kctx, x, w_ih, w_hh, b_ih is not None, dy, dhn,
        dcn if ctx.has_c0 else None, w_hr, need_input_grad=ctx.needs_input_grad[1])


def _reference_backward(ctx, inputs, dy, dhn, dcn):
    wanted = [t is not None and t.requires_grad for t in inputs]
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = inputs
    with torch.enable_grad():
        y, hn, cn = reference.layer(ctx.mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh,
                                    ctx.batch_sizes, w_hr)
        outs, gouts = [y, hn], [dy, dhn]
        if cn is not None:
            outs.append(cn)
            gouts.append(dcn)
        srcs = [t for t, w in zip(inputs, wanted) if w]
        got = iter(torch.autograd.grad(outs, srcs, gouts, create_graph=True, allow_unused=True)
                   if srcs else ())
    return [next(got) if w else None for w in wanted]
