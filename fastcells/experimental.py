"""EXPERIMENTAL paths: correct (tested on CPU through the interpreter) but never timed on a GPU,
so off unless their switch (:mod:`fastcells.kernels.config`) turns them on.

Fused directions, ``FASTCELLS_DIRECTIONS=fused``: the two directions of a bidirectional layer
run as two stacked members of one ``rnn_ops.run_layer`` call, in the same launches
(``kernels.recurrence``'s member axis).  It halves the step launches but stacks both directions'
inputs and weights at every call; ``bench/directions_sweep.py`` is the measurement that would
decide whether it becomes the default.

The persistent schedule, ``FASTCELLS_RECURRENCE=persistent``, is opt-in the same way for the
same reason; it lives with its kernels (:mod:`fastcells.kernels.persistent`), and ``auto``
takes it only where a GPU-measured table committed beside them says it is faster.
"""
import torch

from . import route as routes
from .kernels import config
from .rnn_ops import run_layer
from .weights import LayerWeights


def directions_fused(route, proj):
    """Whether a bidirectional layer on the triton backend takes :func:`both_directions`: only
    when switched on, outside torch.func, compile and tracing (``route``), without a projection
    (``proj``)."""
    return (not proj and config.fused_directions()
            and route != routes.TRANSFORM and route != routes.GRAPH)


def both_directions(route, cell, inputs):
    """(y, h_n, c_n) of both directions, each stacked on a leading dimension of 2: ``inputs``
    (``LayerInputs``) with x the input and its time reversal, h0/c0 (2, B, .), and weights both
    directions' in torch's ``_flat_weights`` order."""
    xs, pair = inputs.x, inputs.weights
    stacked = [torch.stack(ws) for ws in zip(*pair)]   # w_ih, w_hh (, b_ih, b_hh)
    return run_layer(route, cell, inputs._replace(x=torch.stack(xs),
                                                  weights=LayerWeights(*stacked)))
