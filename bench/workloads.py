"""What each implementation runs for a case: fastcells and the baselines a user would otherwise
reach for, all on the same random weights and data (never zeros).

Recurrent layers and cells:

``fastcells``           ``fastcells.LSTM``/``GRU``/``RNN`` (and cells) with ``backend='triton'``
``native``              ``torch.nn.LSTM``/... : cuDNN on CUDA, torch's own kernels on CPU
``cell_loop``           a Python loop over steps of ``torch.nn.LSTMCell``/``GRUCell``/``RNNCell``
                        (ATen's fused cell kernels on CUDA); layers only
``reference``           the fastcells modules with ``backend='reference'``: plain PyTorch math, eager
``reference_compiled``  the reference cell function (``fastcells.reference``) under
                        ``torch.compile(fullgraph=True, dynamic=False)``, driven step by step by the
                        same Python loop as ``cell_loop``.  Compiling the whole unrolled layer
                        instead took 90 s (forward and backward) for one LSTM at T=100, B=16,
                        H=256 on the 2-core development CPU, and grows with T.

A packed case (``LayerCase.lengths``) times fastcells, native and reference on a PackedSequence
built inside the timed forward from the padded (T, B, I) input and the host lengths
(``pack_padded_sequence(..., enforce_sorted=False)``: packing is part of what a user pays); the
output is the packed output's ``.data`` (sum of lengths, D*H).  The step loops take padded
batches only.

Passes: ``fwd`` (a training forward: autograd records), ``bwd`` (``torch.autograd.grad`` of
the outputs against random output gradients, on a graph kept from one forward), ``fwd+bwd``.
Gradients are taken for the input and every parameter (for cells also the incoming state), as a
layer inside a network needs them; a layer's initial state is random and takes no gradient.

Clip-by-global-norm (``max_norm=1``, gradients drawn from N(0, 1) so the first call clips):

``fastcells``       ``fastcells.clip_grad_norm_`` under ``use_backend('triton')``
``reference``       ``fastcells.clip_grad_norm_`` under ``use_backend('reference')``
``torch_foreach``   ``torch.nn.utils.clip_grad_norm_(..., foreach=True)``
``torch_loop``      ``torch.nn.utils.clip_grad_norm_(..., foreach=False)``
"""
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fastcells
from fastcells import reference
from fastcells.backend import interpreter_enabled
from fastcells.modules import TORCH_CLASSES, TWINS

from .cases import CellCase, ClipCase, LayerCase

MAX_NORM = 1.0
TORCH_LAYER = {mode: classes[0] for mode, classes in TORCH_CLASSES.items()}
TORCH_CELL = {mode: classes[1] for mode, classes in TORCH_CLASSES.items()}


@dataclass
class Pass:
    """One timed callable; ``setup`` (untimed, optional) runs once before it."""
    fn: object
    setup: object = None


def not_applicable(case, impl, device, allow_interpreter=False):
    """Why ``impl`` cannot be timed for ``case`` on ``device`` (a sentence), or None."""
    if impl == "fastcells" and device.type != "cuda":
        if not (allow_interpreter and interpreter_enabled()):
            return ("Triton timings need a CUDA GPU: Triton's interpreter runs the kernels on CPU "
                    "to check their arithmetic, not their speed")
    if isinstance(case, ClipCase) and impl in ("fastcells", "reference"):
        if not hasattr(fastcells, "clip_grad_norm_"):
            return "fastcells.clip_grad_norm_ is not importable from this checkout"
    if impl == "cell_loop" and not isinstance(case, LayerCase):
        return "the cell loop is a layer baseline"
    if impl in ("cell_loop", "reference_compiled") and getattr(case, "packed", False):
        return ("the step loops run padded batches only: a packed batch (shrinking batch per "
                "step) is timed for fastcells, native and reference")
    return None


def build(case, impl, dtype, device):
    """{pass name: Pass} for ``impl`` on ``case`` in ``dtype`` on ``device``."""
    torch.manual_seed(0)
    if isinstance(case, LayerCase):
        return _layer(case, impl, dtype, device)
    if isinstance(case, CellCase):
        return _cell(case, impl, dtype, device)
    if isinstance(case, ClipCase):
        return _clip(case, impl, dtype, device)
    raise TypeError(f"unknown case {case!r}")


# ------------------------------------------------------------------------------------ passes
def _passes(forward, targets, out_grads):
    """fwd, bwd and fwd+bwd of ``forward`` (returns a tuple of outputs) against ``targets``."""
    kept = []

    def keep_graph():
        kept[:] = [forward()]

    return {
        "fwd": Pass(forward),
        "bwd": Pass(lambda: torch.autograd.grad(kept[0], targets, out_grads, retain_graph=True),
                    setup=keep_graph),
        "fwd+bwd": Pass(lambda: torch.autograd.grad(forward(), targets, out_grads)),
    }


def _compiled_step(mode):
    """The reference cell function of ``mode`` under torch.compile, as a step of the loop."""
    torch._dynamo.reset()       # a fresh cache: no stale graphs, no recompile limit reached
    opts = dict(fullgraph=True, dynamic=False)
    if mode == "lstm":
        return torch.compile(reference.lstm_cell, **opts)
    if mode == "gru":
        return torch.compile(reference.gru_cell, **opts)
    return torch.compile(reference.rnn_cell, **opts)


def _step_call(mode, fn, x, state, weights):
    """One step of ``fn`` (an nn cell, or a reference cell function with its weights)."""
    if weights is None:                                 # an nn.*Cell module
        return fn(x, state) if mode == "lstm" else (fn(x, state[0]),)
    if mode == "lstm":
        return fn(x, state[0], state[1], *weights)
    return (fn(x, state[0], *weights),)


# ------------------------------------------------------------------------------------ layers
def _layer_weights(net, layers, D):
    """(w_ih, w_hh, b_ih, b_hh) of each (layer, direction) of a torch RNN module, in order."""
    out = []
    for layer in range(layers):
        for d in range(D):
            sfx = f"l{layer}" + ("_reverse" if d else "")
            out.append(tuple(getattr(net, f"{n}_{sfx}") for n in
                             ("weight_ih", "weight_hh", "bias_ih", "bias_hh")))
    return out


def _loop_layers(step, x, hx, layers, D, lstm):
    """A multi-layer (bidirectional) network as a Python loop over steps: ``step(k, x_t, state)``
    advances layer-direction ``k``; returns the last layer's output (T, B, D*H).  This is the
    baseline itself (what a user writes with nn cells), so it cannot use fastcells' own layer
    loop (``functional._rnn``), which runs whole layers."""
    h0, c0 = hx if lstm else (hx, None)
    inp, T = x, x.shape[0]
    for layer in range(layers):
        outs = []
        for d in range(D):
            k = layer * D + d
            state = (h0[k], c0[k]) if lstm else (h0[k],)
            ys = [None] * T
            for t in (range(T - 1, -1, -1) if d else range(T)):
                state = step(k, inp[t], state)
                ys[t] = state[0]
            outs.append(torch.stack(ys))
        inp = outs[0] if D == 1 else torch.cat(outs, dim=-1)
    return inp


def _layer(case, impl, dtype, device):
    mode, D = case.op, 2 if case.bidirectional else 1
    lstm = mode == "lstm"
    base = TORCH_LAYER[mode](case.I, case.H, num_layers=case.layers,
                             bidirectional=case.bidirectional).to(device=device, dtype=dtype)
    x = torch.randn(case.T, case.B, case.I, device=device, dtype=dtype, requires_grad=True)
    h0 = torch.randn(case.layers * D, case.B, case.H, device=device, dtype=dtype)
    hx = (h0, torch.randn_like(h0)) if lstm else h0
    rows = (case.rows,) if case.packed else (case.T, case.B)
    dy = [torch.randn(*rows, D * case.H, device=device, dtype=dtype)]
    if impl in ("native", "fastcells", "reference"):
        net = base
        if impl != "native":
            net = TWINS[TORCH_LAYER[mode]](case.I, case.H, num_layers=case.layers,
                                   bidirectional=case.bidirectional,
                                   backend="triton" if impl == "fastcells" else "reference")
            net = net.to(device=device, dtype=dtype)
            net.load_state_dict(base.state_dict())
        if not case.packed:
            return _passes(lambda: (net(x, hx)[0],), [x, *net.parameters()], dy)
        lengths = torch.tensor(case.lengths)        # on the host, as pack_padded_sequence wants

        def forward():
            # Packing is timed too: a user pays for it on every call.
            packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
            return (net(packed, hx)[0].data,)
        return _passes(forward, [x, *net.parameters()], dy)
    if case.packed:
        raise ValueError(not_applicable(case, impl, device))
    weights = _layer_weights(base, case.layers, D)
    if impl == "cell_loop":
        cells = []
        for layer in range(case.layers):
            for d in range(D):
                cell = TORCH_CELL[mode](case.I if layer == 0 else D * case.H, case.H)
                w_ih, w_hh, b_ih, b_hh = weights[layer * D + d]
                cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh = w_ih, w_hh, b_ih, b_hh
                cells.append(cell)

        def step(k, x_t, state):
            return _step_call(mode, cells[k], x_t, state, None)
    elif impl == "reference_compiled":
        fn = _compiled_step(mode)

        def step(k, x_t, state):
            return _step_call(mode, fn, x_t, state, weights[k])
    else:
        raise ValueError(f"unknown layer implementation {impl!r}")
    forward = lambda: (_loop_layers(step, x, hx, case.layers, D, lstm),)   # noqa: E731
    return _passes(forward, [x, *base.parameters()], dy)


# ------------------------------------------------------------------------------------- cells
def _cell(case, impl, dtype, device):
    mode = case.mode
    lstm = mode == "lstm"
    base = TORCH_CELL[mode](case.I, case.H).to(device=device, dtype=dtype)
    x = torch.randn(case.B, case.I, device=device, dtype=dtype, requires_grad=True)
    state = [torch.randn(case.B, case.H, device=device, dtype=dtype, requires_grad=True)
             for _ in range(2 if lstm else 1)]
    d_out = [torch.randn(case.B, case.H, device=device, dtype=dtype) for _ in state]
    hx = tuple(state) if lstm else state[0]
    if impl in ("native", "fastcells", "reference"):
        net = base
        if impl != "native":
            net = TWINS[TORCH_CELL[mode]](case.I, case.H,
                                  backend="triton" if impl == "fastcells" else "reference")
            net = net.to(device=device, dtype=dtype)
            net.load_state_dict(base.state_dict())

        def forward():
            out = net(x, hx)
            return tuple(out) if lstm else (out,)
        return _passes(forward, [x, *state, *net.parameters()], d_out)
    if impl == "reference_compiled":
        fn = _compiled_step(mode)
        weights = (base.weight_ih, base.weight_hh, base.bias_ih, base.bias_hh)
        forward = lambda: tuple(_step_call(mode, fn, x, tuple(state), weights))   # noqa: E731
        return _passes(forward, [x, *state, *base.parameters()], d_out)
    raise ValueError(f"unknown cell implementation {impl!r}")


# -------------------------------------------------------------------------------------- clip
def _clip(case, impl, dtype, device):
    params = []
    for shape in case.shapes:
        # The parameters' values are never read by a clip: only their gradients.
        p = nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
        p.grad = torch.randn(shape, device=device, dtype=dtype)
        params.append(p)
    if impl in ("fastcells", "reference"):
        backend = "triton" if impl == "fastcells" else "reference"

        def fn():
            with fastcells.use_backend(backend):
                return fastcells.clip_grad_norm_(params, MAX_NORM)
    elif impl in ("torch_foreach", "torch_loop"):
        foreach = impl == "torch_foreach"
        fn = lambda: nn.utils.clip_grad_norm_(params, MAX_NORM, foreach=foreach)   # noqa: E731
    else:
        raise ValueError(f"unknown clip implementation {impl!r}")
    return {"clip": Pass(fn)}
