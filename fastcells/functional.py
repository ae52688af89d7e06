"""The differentiable ops the modules are built from.

``rnn`` runs a whole multi-layer (bidirectional, packed) recurrent network; the ``*_cell``
functions run one step.  ``backend`` is resolved once per call (see :mod:`fastcells.backend`),
here or by the module that calls :func:`rnn_on` / :func:`cell_on` with a resolved name; each
backend supplies only the single-layer, single-direction primitive, everything around it
(layers, directions, dropout, packing) is shared.
"""
import torch
import torch.nn.functional as F
from typing import NamedTuple, Optional, Sequence

from torch import Tensor

from . import cells, experimental, native_ops, onnx_export, reference
from . import route as routes
from .backend import resolve
from .rnn_ops import run_layer, run_step
from .weights import LayerInputs, LayerWeights

MODES = tuple(cells.CELLS)   # the cells' names: "lstm", "gru", "rnn_tanh", "rnn_relu"


class Net(NamedTuple):
    """The network around the layers, as torch.nn.LSTM/GRU/RNN's constructor and forward say."""
    num_layers: int = 1
    bias: bool = True
    dropout: float = 0.0
    training: bool = False
    bidirectional: bool = False
    batch_first: bool = False
    proj_size: int = 0


class NetInputs(NamedTuple):
    """A network call's tensors: input (T, B, I) ((B, T, I) batch-first), or a PackedSequence's
    data (N, I) with its ``batch_sizes``; h0 (L*D, B, K); c0 (L*D, B, H) for a paired state,
    else None; weights: the module's ``_flat_weights`` order."""
    input: Tensor
    h0: Tensor
    c0: Optional[Tensor]
    weights: Sequence[Tensor]
    batch_sizes: Optional[Tensor] = None


# --------------------------------------------------------------------------------- autocast
_AUTOCAST_DEVICES = ("cuda", "cpu")   # where the cells' autocast policies (Cell.autocast) apply


def _autocasting(device_type):
    return device_type in _AUTOCAST_DEVICES and torch.is_autocast_enabled(device_type)


def _autocast(cell, kind, device_type, tensors):
    """Under torch.autocast (see :func:`_autocasting`), cast like torch would (the cell's
    policy for ``kind``, "layer" or "cell"), then run with autocast off (the kernels take one
    dtype).  Returns (tensors, context manager)."""
    if (device_type, kind) in cell.autocast:
        dt = cell.autocast[device_type, kind] or torch.get_autocast_dtype(device_type)
        tensors = [t.to(dt) if t is not None and t.is_floating_point() else t for t in tensors]
    return tensors, torch.autocast(device_type, enabled=False)


# ------------------------------------------------------------------ packed <-> padded, reversal
def _packed_index(batch_sizes, device):
    """Row of each packed element in the (T * B) padded layout: step t's first batch_sizes[t]
    rows, step after step (built with tensor ops, not a Python list: its cost grows with T*B,
    every call)."""
    B = int(batch_sizes[0])
    active = torch.arange(B, device=batch_sizes.device) < batch_sizes[:, None]  # (T, B)
    return active.view(-1).nonzero().view(-1).to(device), B


def _reverse_index(T, B, batch_sizes, device):
    """(T, B) time index reversing each packed sequence within its own length."""
    t = torch.arange(T, device=device)[:, None].expand(T, B)
    n = batch_sizes.to(device)
    lengths = (n[:, None] > torch.arange(B, device=device)[None, :]).sum(0)
    return torch.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)


def _reverse(x, rev):
    """x reversed in time: a flip when every sequence has the full length (its backward is a
    flip; a gather's fills a zero tensor and scatters into it), else a gather by ``rev``."""
    if rev is None:
        return x.flip(0)
    return torch.gather(x, 0, rev[:, :, None].expand_as(x))


def _route(backend, tensor):
    """The resolved backend of a functional call: 'native' (torch's ops, which export to ONNX's
    own RNN operators) while torch.onnx.export runs, whatever ``backend`` says."""
    return "native" if onnx_export.exporting() else resolve(backend, tensor)


# ------------------------------------------------------------------------------------ the net
def rnn(mode, input, hx, weights, *, num_layers=1, bias=True, dropout=0.0, training=False,
        bidirectional=False, batch_first=False, batch_sizes=None, proj_size=0, backend=None):
    """A torch.nn.LSTM/GRU/RNN forward on already validated arguments.

    mode: a cell's name (``MODES``) or a :class:`fastcells.cells.Cell`; input: (T, B, I)
    ((B, T, I) with ``batch_first``), or the data of a PackedSequence (N, I) with its
    ``batch_sizes``; hx: h0 (L*D, B, K) or (h0, c0) for the LSTM; weights: the module's
    ``_flat_weights`` order.  Returns (output, h_n) or (output, (h_n, c_n))."""
    cell = cells.get(mode)
    net = Net(num_layers, bias, dropout, training, bidirectional, batch_first, proj_size)
    return rnn_on(_route(backend, input), cell, input, hx, weights, net, batch_sizes)


def rnn_on(be, cell, input, hx, weights, net, batch_sizes=None):
    """:func:`rnn` on the resolved backend ``be`` ('triton', 'reference' or 'native'), for
    ``cell`` (a Cell) and ``net`` (a :class:`Net`)."""
    if be == "native":
        # under torch.compile: torch's kernels as one opaque op, which Dynamo need not trace
        # (torch.export and torch.onnx.export trace torch's forward into torch's operators)
        compiled = torch.compiler.is_compiling() and not torch.compiler.is_exporting()
        run = native_ops.rnn if compiled else _native_rnn
        return run(cell, NetInputs(input, hx, None, weights, batch_sizes), net)
    h0, c0 = cell.state(hx)
    if not _autocasting(input.device.type):
        return _rnn(be, cell, NetInputs(input, h0, c0, weights, batch_sizes), net)
    (input, h0, c0, *weights), no_autocast = _autocast(cell, "layer", input.device.type,
                                                       [input, h0, c0, *weights])
    with no_autocast:
        return _rnn(be, cell, NetInputs(input, h0, c0, weights, batch_sizes), net)


def _layer_weights(w, net):
    """One layer-direction's LayerWeights from its slice of torch's ``_flat_weights``."""
    return LayerWeights(w[0], w[1], *((w[2], w[3]) if net.bias else (None, None)),
                        w[-1] if net.proj_size > 0 else None)


def _rnn(be, cell, inputs, net):
    """The shared outer loop: layers, directions, dropout and packing around one layer-direction
    primitive (``run_layer`` on the kernels, ``reference.layer`` on the reference math)."""
    input, h0, c0, weights, batch_sizes = inputs
    D = 2 if net.bidirectional else 1
    if batch_sizes is not None:
        idx, B = _packed_index(batch_sizes, input.device)
        T = len(batch_sizes)
        x = input.new_zeros(T * B, input.shape[-1]).index_copy(0, idx, input).view(T, B, -1)
    else:
        x = input.transpose(0, 1) if net.batch_first else input
        T, B = x.shape[0], x.shape[1]
        if T == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
    rev = (_reverse_index(T, B, batch_sizes, x.device)
           if net.bidirectional and batch_sizes is not None else None)
    per = len(weights) // (net.num_layers * D)
    route = routes.decide() if be == "triton" else None
    fused = D == 2 and be == "triton" and experimental.directions_fused(route, net.proj_size > 0)
    hns, cns = [], []
    for layer in range(net.num_layers):
        outs = []
        if fused:   # experimental: both directions as two stacked members of one call
            k = 2 * layer
            pair = (weights[k * per:(k + 1) * per], weights[(k + 1) * per:(k + 2) * per])
            y, hn, cn = experimental.both_directions(
                route, cell, LayerInputs((x, _reverse(x, rev)), h0[k:k + 2],
                                         None if c0 is None else c0[k:k + 2], pair, batch_sizes))
            outs = [y[0], _reverse(y[1], rev)]
            hns += [hn[0], hn[1]]
            cns += [None, None] if cn is None else [cn[0], cn[1]]
        for d in range(0 if fused else D):
            k = layer * D + d
            lw = _layer_weights(weights[k * per:(k + 1) * per], net)  # torch's _flat_weights order
            xin = _reverse(x, rev) if d == 1 else x
            c0k = None if c0 is None else c0[k]
            if be == "triton":
                y, hn, cn = run_layer(route, cell, LayerInputs(xin, h0[k], c0k, lw, batch_sizes))
            else:
                y, hn, cn = reference.layer(cell, xin, h0[k], c0k, lw, batch_sizes)
            outs.append(_reverse(y, rev) if d == 1 else y)
            hns.append(hn)
            cns.append(cn)
        x = outs[0] if D == 1 else torch.cat(outs, dim=-1)
        if net.dropout > 0 and net.training and layer < net.num_layers - 1:
            x = F.dropout(x, p=net.dropout, training=True)
    if batch_sizes is not None:
        output = x.reshape(T * B, -1).index_select(0, idx)
    else:
        output = x.transpose(0, 1) if net.batch_first else x
    h_n = torch.stack(hns)
    return output, cell.hidden(h_n, torch.stack(cns) if cell.has_cell else None)


def _native_rnn(cell, inputs, net):
    """torch's own op; ``inputs.h0`` holds the state in torch's form."""
    input, hx, _, weights, batch_sizes = inputs
    hx_arg = list(hx) if cell.has_cell else hx
    if batch_sizes is None:
        res = cell.native_layer(input, hx_arg, weights, net.bias, net.num_layers, net.dropout,
                                net.training, net.bidirectional, net.batch_first)
    else:
        res = cell.native_layer(input, batch_sizes, hx_arg, weights, net.bias, net.num_layers,
                                net.dropout, net.training, net.bidirectional)
    return res[0], cell.hidden(res[1], res[2] if cell.has_cell else None)


# ---------------------------------------------------------------------------------- the cells
def _cell(cell, input, hx, weights, backend):
    return cell_on(_route(backend, input), cell, input, hx, weights)


def cell_on(be, cell, input, hx, weights):
    """One step of ``cell`` on the resolved backend ``be``: the state in torch's form, (h', c')
    for the LSTM, else h'; ``weights`` (w_ih, w_hh, b_ih, b_hh, None), a LayerWeights or any
    sequence in its order."""
    w_ih, w_hh, b_ih, b_hh, _ = weights
    if be == "native":
        return cell.native_cell(input, hx, w_ih, w_hh, b_ih, b_hh)
    h, c = cell.state(hx)
    if not _autocasting(input.device.type):
        return _fused_or_reference_cell(be, cell, input, h, c, weights)
    (input, h, c, *weights), no_autocast = _autocast(
        cell, "cell", input.device.type, [input, h, c, w_ih, w_hh, b_ih, b_hh])
    with no_autocast:
        return _fused_or_reference_cell(be, cell, input, h, c, LayerWeights(*weights))


def _fused_or_reference_cell(be, cell, input, h, c, weights):
    if be == "reference":
        hn, cn = cell.step(input, h, c, weights)
    else:   # a cell is a one-step layer: the same fused kernels (rnn_ops.run_step)
        hn, cn = run_step(routes.decide(), cell, LayerInputs(input, h, c, weights))
    return cell.hidden(hn, cn)


def lstm_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, backend=None):
    """One LSTM step on (B, I) input and hx = (h, c); returns (h', c')."""
    return _cell(cells.LSTM, input, (hx[0], hx[1]), LayerWeights(w_ih, w_hh, b_ih, b_hh), backend)


def gru_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, backend=None):
    """One GRU step on (B, I) input and hidden (B, H); returns h'."""
    return _cell(cells.GRU, input, hx, LayerWeights(w_ih, w_hh, b_ih, b_hh), backend)


def rnn_tanh_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, backend=None):
    return _cell(cells.RNN_TANH, input, hx, LayerWeights(w_ih, w_hh, b_ih, b_hh), backend)


def rnn_relu_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, backend=None):
    return _cell(cells.RNN_RELU, input, hx, LayerWeights(w_ih, w_hh, b_ih, b_hh), backend)
