"""The layer as custom ops, for torch.compile and torch.jit.trace: ``fastcells::rnn_layer`` and
``fastcells::rnn_layer_backward``, with fake implementations (no graph break, no retracing of
the time loop).  A schema takes flat tensors and a cell's name; absent tensors travel as None
into the ops and come back as 1-D empty tensors (a schema returns no None)."""
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import cells
from .kernels.common import acc_dtype
from .kernels.recurrence import layer_forward
from .rnn_args import BackwardArgs, inputs_of, unaliased
from .rnn_autograd import kernel_backward
from .rnn_higher import reference_grads
from .weights import LayerBuffers, LayerGrads


def _none(t):
    # the 1-D empty placeholder of an absent buffer (a real one with B = 0 is 2-D or more, and
    # kept)
    return None if t is None or t.numel() == 0 and t.dim() == 1 else t


def _or_empty(t, like):
    return t if t is not None else like.new_empty(0)


@torch.library.custom_op("fastcells::rnn_layer", mutates_args=())
def rnn_layer(mode: str, x: Tensor, h0: Tensor, c0: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
              b_ih: Optional[Tensor], b_hh: Optional[Tensor], w_hr: Optional[Tensor],
              batch_sizes: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns the LayerBuffers [y, cs, saved, m] (kernels.layer); absent ones empty."""
    inputs = inputs_of((x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr), batch_sizes)
    return tuple(_or_empty(t, x) for t in layer_forward(cells.CELLS[mode].kernels, inputs))


@rnn_layer.register_fake
def _(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes):
    spec = cells.CELLS[mode].kernels
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
    """Returns the LayerGrads [dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr]; absent ones
    empty."""
    # the gradients read whether there are biases, never their values
    b = w_hh.new_empty(0) if has_bias else None
    inputs = inputs_of((x, h0, c0, w_ih, w_hh, b, b, w_hr), batch_sizes)
    buffers = LayerBuffers(y, _none(cs), _none(saved), _none(m))
    # the schema takes need_dx alone: every other gradient always (its fake returns them)
    needs = LayerGrads(need_dx, *(True,) * 7)
    grads = unaliased(kernel_backward(BackwardArgs.of(cells.CELLS[mode], needs, inputs, buffers,
                                                      dy, dcn)))
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
    flat = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
    ctx.present = [t is not None for t in flat]
    ctx.save_for_backward(*[t for t in flat if t is not None], *output)


def _op_backward(ctx, dy, dcs, _dsaved, _dm):
    saved_tensors = iter(ctx.saved_tensors)
    inputs = inputs_of([next(saved_tensors) if p else None for p in ctx.present],
                       ctx.batch_sizes)
    y, cs, saved, m = saved_tensors
    x, h0, c0, (w_ih, w_hh, b_ih, _, w_hr), _ = inputs
    dy = torch.zeros_like(y) if dy is None else dy
    dcn = dcs[-1].to(x.dtype) if dcs is not None and c0 is not None else None
    if torch.is_grad_enabled():
        grads = LayerGrads(*reference_grads(cells.CELLS[ctx.mode], inputs, dy, dcn))
    else:
        grads = rnn_layer_backward(ctx.mode, x, h0, c0, w_ih, w_hh, w_hr, b_ih is not None, y,
                                   cs, saved, m, ctx.batch_sizes, dy, dcn,
                                   ctx.needs_input_grad[1])
        grads = LayerGrads(*[_none(g) for g in grads])
    if c0 is None:
        grads = grads._replace(dc0=None)
    return (None, *grads, None)   # rnn_layer's positions: mode, the inputs, batch_sizes


rnn_layer.register_autograd(_op_backward, setup_context=_op_setup_context)
