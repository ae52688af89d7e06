"""Gradient-flow diagnostics: how strongly each step's hidden state affects the loss.

For a recurrent network with hidden states h_1 .. h_T and a loss L, ``hidden_grad_norms``
measures ‖∂L/∂h_t‖ for every step t: the *total* derivative, through every later step (not only
the direct path from h_t's own output).  In a vanilla RNN, which multiplies by the same weight
matrix at every step, this norm shrinks (vanishes) or grows (explodes) geometrically as t moves
away from the loss; LSTM and GRU keep it alive.  The *vanishing factor*
‖∂L/∂h_T‖ / ‖∂L/∂h_1‖ turns that into one number: large means the first step barely affects
the loss.

Accepted modules (fastcells' and torch's alike; fastcells' are subclasses of torch's):

* ``torch.nn.RNN`` (tanh or relu), ``torch.nn.LSTM`` (``proj_size`` included), ``torch.nn.GRU``:
  any ``num_layers``, ``bias``, ``batch_first``; unidirectional only; a padded tensor input (not a
  ``PackedSequence``).
* ``torch.nn.RNNCell``, ``torch.nn.LSTMCell``, ``torch.nn.GRUCell``, stepped over the time axis
  of the input.

The recurrence is unrolled step by step with the module's own parameters and the matching cell
op of :mod:`fastcells.functional` (a fastcells module keeps its ``backend``, a torch module runs
torch's own cell ops, backend 'native'), so that every h_t is a node of the autograd graph.  An
LSTM with ``proj_size`` steps through the plain-PyTorch math of :mod:`fastcells.reference`.
For a model that wraps a recurrent module (embedding, head, ...), pass the recurrent module and
put the rest of the model in ``loss_fn``.  Nothing is modified: parameters' ``.grad`` are left
untouched.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from . import cells, functional
from .backend import resolve
from .weights import LayerWeights

__all__ = ["GradientFlow", "hidden_grad_norms", "vanishing_factor"]

_SUPPORTED = ("torch.nn.RNN, LSTM or GRU, or torch.nn.RNNCell, LSTMCell or GRUCell "
              "(fastcells' or torch's)")


@dataclass
class GradientFlow:
    """The result of :func:`hidden_grad_norms`.

    ``norms``: float64 CPU tensor (T, B), ‖∂L/∂h_t‖ of each sample b (the 2-norm over the hidden
    units), t = 1..T along dim 0; ``loss``: the value of L."""

    norms: torch.Tensor
    loss: float

    @property
    def mean(self):
        """(T,) tensor: ‖∂L/∂h_t‖ averaged over the batch."""
        return self.norms.mean(dim=1)

    @property
    def vanishing_factor(self):
        """mean_b ‖∂L/∂h_T‖ / mean_b ‖∂L/∂h_1‖.

        inf when the first step's gradient is exactly 0 (below the dtype's range, or cut by
        saturated units: tanh'(x) rounds to 0 for large |x|); nan when both are 0."""
        m = self.mean
        first, last = float(m[0]), float(m[-1])
        if first == 0.0:
            return math.inf if last > 0 else math.nan
        return last / first

    def at(self, t):
        """The batch-mean norm at 1-based step ``t`` (negative counts from the end)."""
        return float(self.mean[t - 1 if t > 0 else t])


def _cell_step(cell, backend, x, h, c, w):
    """One step of ``cell`` with weights ``w`` (a LayerWeights): (h', c' or None).  A
    projection (the LSTM's w_hr) has no fused cell: the reference step takes it."""
    if w.w_hr is not None:
        return cell.step(x, h, c, w)
    out = functional.cell_on(resolve(backend, x), cell, x, cell.hidden(h, c), w)
    return cell.state(out)


def _describe(module):
    """(cell, per-layer LayerWeights, batch_first, is_cell) of a supported module, else
    TypeError."""
    cell = cells.of_module(module)
    if isinstance(module, nn.RNNBase):
        if module.bidirectional:
            raise ValueError("hidden_grad_norms: bidirectional modules are not supported "
                             "(the backward direction's h_t depends on later inputs); got "
                             f"{type(module).__name__} with bidirectional=True")
        if cell is None:
            raise TypeError(f"hidden_grad_norms: unsupported recurrent mode {module.mode!r}")
        layers = []
        for k in range(module.num_layers):
            g = lambda name: getattr(module, f"{name}_l{k}", None)  # noqa: E731
            layers.append(LayerWeights(g("weight_ih"), g("weight_hh"),
                                       g("bias_ih") if module.bias else None,
                                       g("bias_hh") if module.bias else None,
                                       g("weight_hr") if getattr(module, "proj_size", 0) > 0
                                       else None))
        return cell, layers, module.batch_first, False
    if cell is not None:
        w = LayerWeights(module.weight_ih, module.weight_hh, module.bias_ih, module.bias_hh)
        return cell, [w], False, True
    raise TypeError(f"hidden_grad_norms: expected a {_SUPPORTED}, got {type(module).__name__}; "
                    "for a model that wraps one, pass the recurrent module and put the rest of "
                    "the model in loss_fn")


def hidden_grad_norms(module, input, loss_fn, hx=None, *, layer=-1, dtype=None):
    """‖∂L/∂h_t‖ for every step t of a recurrent ``module`` (see the module docstring for the
    kinds accepted).

    input: batched 3-D tensor, (T, B, features), or (B, T, features) for a ``batch_first``
        module; a cell is stepped over dim 0 (T, B, features).
    loss_fn(output, hidden) -> scalar tensor: receives what the module's forward would return:
        for RNN/LSTM/GRU ``output`` (T, B, K) (batch-first if the module is) and ``hidden``
        h_n (num_layers, B, K) or (h_n, c_n); for a cell ``output`` is the stacked states
        (T, B, H) and ``hidden`` the last state h (or (h, c) for LSTMCell).
    hx: optional initial state in the module's own format (default zeros).
    layer: whose hidden states to measure in a multi-layer module (default the top one).
    dtype: run the unrolled recurrence, and its backward pass, in this dtype (e.g.
        torch.float64, so that a vanishing gradient of 1e-40 is measured rather than flushed to
        0 in float32); default the input's.  ``loss_fn`` still receives the input's dtype.

    Returns a :class:`GradientFlow` with per-sample norms (T, B); ``.mean`` averages over the
    batch and ``.vanishing_factor`` is mean ‖∂L/∂h_T‖ / mean ‖∂L/∂h_1‖.  For the LSTM, h_t is
    the hidden (output) state, not the cell state c_t.  Parameters' ``.grad`` are not touched.
    """
    cell, layers, batch_first, is_cell = _describe(module)
    if isinstance(input, PackedSequence):
        raise TypeError("hidden_grad_norms: expected a padded tensor input, got a PackedSequence "
                        "(pad it with torch.nn.utils.rnn.pad_packed_sequence)")
    if not isinstance(input, torch.Tensor) or input.dim() != 3:
        shape = "(B, T, features)" if batch_first else "(T, B, features)"
        got = f"{input.dim()}-D" if isinstance(input, torch.Tensor) else type(input).__name__
        raise ValueError(f"hidden_grad_norms: expected a batched 3-D input {shape}, got {got}")
    num_layers = len(layers)
    if not -num_layers <= layer < num_layers:
        raise ValueError(f"hidden_grad_norms: layer {layer} out of range for a module with "
                         f"{num_layers} layer(s)")
    layer %= num_layers
    dtype = dtype or input.dtype
    # fastcells modules carry a ``backend`` (None: the default); torch's run their own ops.
    backend = getattr(module, "backend", "native")
    x = (input.transpose(0, 1) if batch_first else input).to(dtype)
    T, B = x.shape[0], x.shape[1]
    if T == 0:
        raise ValueError("hidden_grad_norms: the input has no time steps")
    lstm = cell.has_cell
    hidden_size = module.hidden_size
    out_size = getattr(module, "proj_size", 0) or hidden_size

    # Initial states, one (h, c) per layer, as fresh leaves that require grad: every h_t then
    # belongs to the graph even when the parameters are frozen.
    if hx is None:
        h0 = [x.new_zeros(B, out_size) for _ in layers]
        c0 = [x.new_zeros(B, hidden_size) for _ in layers] if lstm else [None] * num_layers
    elif is_cell:
        h0, c0 = ([hx[0]], [hx[1]]) if lstm else ([hx], [None])
    else:
        h0, c0 = (list(hx[0]), list(hx[1])) if lstm else (list(hx), [None] * num_layers)
    h0 = [h.detach().to(dtype).requires_grad_(True) for h in h0]
    c0 = [None if c is None else c.detach().to(dtype) for c in c0]

    # The network's one layer loop is functional._rnn; this one must differ: it unrolls every
    # step as a separate op so that each h_t is a tensor of the graph whose gradient we read.
    with torch.enable_grad():
        measured, last_h, last_c = None, [], []
        for k, w in enumerate(layers):
            w = LayerWeights(*(None if p is None else p.to(dtype) for p in w))
            if k > 0 and not is_cell and module.dropout > 0 and module.training:
                x = F.dropout(x, p=module.dropout, training=True)
            h, c, hs = h0[k], c0[k], []
            for t in range(T):
                h, c = _cell_step(cell, backend, x[t], h, c, w)
                hs.append(h)
            if k == layer:
                measured = hs
            last_h.append(h)
            last_c.append(c)
            x = torch.stack(hs)
        # loss_fn sees the input's dtype (a float32 head just works); the backward pass through
        # the recurrence still runs in ``dtype``, where the tiny gradients live.
        cast = (lambda t: t.to(input.dtype)) if dtype != input.dtype else (lambda t: t)  # noqa: E731
        output = cast(x.transpose(0, 1) if batch_first else x)
        if is_cell:
            hidden = (cast(last_h[0]), cast(last_c[0])) if lstm else cast(last_h[0])
        else:
            h_n = cast(torch.stack(last_h))
            hidden = (h_n, cast(torch.stack(last_c))) if lstm else h_n
        loss = loss_fn(output, hidden)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            got = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise ValueError(f"hidden_grad_norms: loss_fn must return a scalar tensor, got {got}")
        if loss.requires_grad:
            grads = torch.autograd.grad(loss.reshape(()), measured, allow_unused=True)
        else:   # a loss that does not depend on the states at all
            grads = [None] * T
    norms = torch.stack([
        torch.zeros(B, dtype=torch.float64) if g is None
        else g.detach().to(torch.float64).norm(dim=-1).cpu() for g in grads])
    return GradientFlow(norms=norms, loss=float(loss.detach()))


def vanishing_factor(module, input, loss_fn, hx=None, **kwargs):
    """Shortcut: ``hidden_grad_norms(...).vanishing_factor``."""
    return hidden_grad_norms(module, input, loss_fn, hx, **kwargs).vanishing_factor
