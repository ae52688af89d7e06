"""The fused recurrent layer's entry: one layer, one direction, whole sequence, taken the way
the call's route (:mod:`fastcells.route`, decided once at the entry) says.

One primitive serves layers and cells (a cell is a one-step layer, which the launcher runs as
one fused launch); a cell in a plain eager call takes :class:`RNNStep`, the same kernels with a
shorter host path.  The pieces, by concern:

* :mod:`fastcells.rnn_autograd`: the eager autograd Functions (``RNNLayer``, ``RNNStep``,
  ``RNNLayerBackward``);
* :mod:`fastcells.rnn_func`: their torch.func rules (vmap, torch's older vmap);
* :mod:`fastcells.rnn_higher`: differentiable gradients and tangents from the reference math;
* :mod:`fastcells.rnn_custom_ops`: the custom ops torch.compile and torch.jit.trace record;
* :mod:`fastcells.rnn_args`: the Functions' flat arguments, named.
"""
import torch

from . import cells
from . import route as routes
from .kernels.recurrence import layer_forward
from .rnn_args import flat_inputs
from .rnn_autograd import RNNLayer, RNNLayerBackward, RNNStep, live  # noqa: F401
from .rnn_custom_ops import rnn_layer, rnn_layer_backward  # noqa: F401  (registers the ops)
from .weights import LayerInputs, LayerWeights


def _live_inputs(inputs):
    """``inputs`` with escaped torch.func wrappers unwrapped (``rnn_autograd.live``); the
    weights as a plain sequence in LayerWeights' order, which the launchers take."""
    x, h0, c0, (w_ih, w_hh, b_ih, b_hh, w_hr), batch_sizes = inputs
    x, h0, c0, *w = live((x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr))
    return LayerInputs(x, h0, c0, w, batch_sizes)


def run_layer(route, cell, inputs):
    """One layer, one direction of ``cell`` on ``inputs`` (``LayerInputs``) on the fused
    kernels: returns (y (T, B, K), h_n, c_n or None).  In eager calls outside torch.func, every
    tensor may carry a leading member dimension M (kernels.recurrence: the directions of a
    layer in the same launches), and so do the results."""
    x, h0, c0, w, batch_sizes = inputs
    cn = None
    if route == routes.GRAPH:
        y, cs, _, _ = torch.ops.fastcells.rnn_layer(cell.name, x, h0, c0, *w, batch_sizes)
    elif route == routes.INFERENCE or (route == routes.EAGER
                                       and not routes.needs_grad(flat_inputs(inputs))):
        # no autograd node to build (no_grad, or nothing requires grad)
        y, cs, _, _ = layer_forward(cell.kernels, _live_inputs(inputs))
    else:   # plain autograd, a torch.func transform, forward_ad's dual level (tangents)
        y, cs, _, _, cn = RNNLayer.apply(cell, x, h0, c0, *w, batch_sizes)   # LayerArgs
    if x.shape[-3] == 1:  # a view whose backward is a view too (a select's fills zeros)
        cn = None if c0 is None else cs.squeeze(-3)
        return y, y.squeeze(-3), cn if cn is None or cn.dtype == x.dtype else cn.to(x.dtype)
    if c0 is not None and cn is None:
        cn = cs.select(-3, -1)
        if cn.dtype != x.dtype:
            cn = cn.to(x.dtype)
    return y, y.select(-3, -1), cn


def run_step(route, cell, inputs):
    """One step (a cell) of ``cell`` on the fused kernels: ``inputs`` with x (B, I), h (B, K),
    c (B, H) or None, no projection and no batch sizes; returns (h', c' or None).  Plain eager
    calls take :class:`RNNStep`; torch.func, torch.compile, tracing and forward_ad's dual level
    take the one-step layer (its vmap and jvp rules, its custom op)."""
    x, h, c, w, _ = inputs
    if route != routes.EAGER and route != routes.INFERENCE:
        _, hn, cn = run_layer(route, cell, LayerInputs(x[None], h, c, w))
        return hn, cn
    w_ih, w_hh, b_ih, b_hh, _ = w
    if route == routes.EAGER and routes.needs_grad((x, h, c, w_ih, w_hh, b_ih, b_hh)):
        return RNNStep.apply(cell, x, h, c, w_ih, w_hh, b_ih, b_hh)
    hn, cn, _, _ = layer_forward(cell.kernels, _live_inputs(inputs))
    return hn, cn


def recurrent_layer(cell, x, h0, c0, weights, batch_sizes=None):
    """:func:`run_layer` for a call of its own (the route decided here); ``cell`` a
    :class:`fastcells.cells.Cell` or its name."""
    return run_layer(routes.decide(), cells.get(cell),
                     LayerInputs(x, h0, c0, LayerWeights(*weights), batch_sizes))


def recurrent_step(cell, x, h, c, weights):
    """:func:`run_step` for a call of its own; ``weights`` (w_ih, w_hh, b_ih, b_hh, w_hr) with
    w_hr None (a cell has no projection)."""
    if weights[4] is not None:
        raise ValueError("fastcells: a cell has no projection (w_hr must be None)")
    return run_step(routes.decide(), cells.get(cell), LayerInputs(x, h, c, LayerWeights(*weights)))
