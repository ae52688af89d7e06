"""EXPERIMENTAL paths: correct (tested on CPU through the interpreter) but never timed on a GPU,
so off unless their switch (:mod:`fastcells.kernels.config`) turns them on.

Fused directions, ``FASTCELLS_DIRECTIONS=fused``: the two directions of a bidirectional layer
run as two stacked members of one ``recurrent_layer`` call, in the same launches
(``kernels.recurrence``'s member axis).  It halves the step launches but stacks both directions'
inputs and weights at every call; ``bench/directions_sweep.py`` is the measurement that would
decide whether it becomes the default.
"""
import torch

from .kernels import config
from .rnn_ops import recurrent_layer
from .weights import LayerWeights


def directions_fused(proj):
    """Whether a bidirectional layer on the triton backend takes :func:`both_directions`: only
    when switched on, in eager calls outside torch.func, compile and tracing, without a
    projection (``proj``)."""
    return (not proj and config.fused_directions()
            and not torch._C._are_functorch_transforms_active()
            and not torch.compiler.is_compiling() and not torch.jit.is_tracing())


def both_directions(mode, xs, h0, c0, pair, batch_sizes):
    """(y, h_n, c_n) of both directions, each stacked on a leading dimension of 2: ``xs`` the
    input and its time reversal, ``h0``/``c0`` (2, B, .), ``pair`` both directions' weights
    in torch's ``_flat_weights`` order."""
    stacked = [torch.stack(ws) for ws in zip(*pair)]   # w_ih, w_hh (, b_ih, b_hh)
    return recurrent_layer(mode, torch.stack(xs), h0, c0, LayerWeights(*stacked), batch_sizes)
