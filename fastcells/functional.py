"""The differentiable ops the modules are built from.

``rnn`` runs a whole multi-layer (bidirectional, packed) recurrent network; the ``*_cell``
functions run one step.  ``backend`` is resolved once per call (see :mod:`fastcells.backend`),
here or by the module that calls :func:`rnn_on` / :func:`cell_on` with a resolved name; each
backend supplies only the single-layer, single-direction primitive, everything around it
(layers, directions, dropout, packing) is shared.
"""
import torch
import torch.nn.functional as F

from . import experimental, native_ops, onnx_export, reference
from .backend import resolve
from .rnn_ops import recurrent_layer, recurrent_step
from .weights import LayerWeights

MODES = ("lstm", "gru", "rnn_tanh", "rnn_relu")


def _check_mode(mode):
    if mode not in MODES:
        raise ValueError(f"unknown recurrent mode {mode!r}; expected one of {', '.join(MODES)}")


def _layer(backend, mode, x, h0, c0, weights, batch_sizes):
    layer = recurrent_layer if backend == "triton" else reference.layer
    return layer(mode, x, h0, c0, weights, batch_sizes)


# --------------------------------------------------------------------------------- autocast
# What torch's own autocast does to each op, by device: the dtype it computes in (None: the
# autocast dtype; missing: no cast).  On CUDA the RNN layers go through cuDNN in float16 even
# under a bfloat16 autocast (seen with torch 2.11 on an H100: bench/results); the cells follow the
# autocast dtype.  On CPU only the LSTM and RNN layers and the RNN cells are cast.
_AUTOCAST = {
    "cuda": {**{(m, "layer"): torch.float16 for m in MODES}, **{(m, "cell"): None for m in MODES}},
    "cpu": {("lstm", "layer"): None, ("rnn_tanh", "layer"): None, ("rnn_relu", "layer"): None,
            ("rnn_tanh", "cell"): None, ("rnn_relu", "cell"): None},
}


def _autocasting(device_type):
    return device_type in _AUTOCAST and torch.is_autocast_enabled(device_type)


def _autocast(mode, kind, device_type, tensors):
    """Under torch.autocast (see :func:`_autocasting`), cast like torch would, then run with
    autocast off (the kernels take one dtype). Returns (tensors, context manager)."""
    if (mode, kind) in _AUTOCAST[device_type]:
        dt = _AUTOCAST[device_type][mode, kind] or torch.get_autocast_dtype(device_type)
        tensors = [t.to(dt) if t is not None and t.is_floating_point() else t for t in tensors]
    return tensors, torch.autocast(device_type, enabled=False)


# ------------------------------------------------------------------ packed <-> padded, reversal
def _packed_index(batch_sizes, device):
    """Row of each packed element in the (T * B) padded layout: step t's first batch_sizes[t]
    rows, step after step (built with tensor ops: a Python list costs about 1 ms at
    T=100, B=64, every call)."""
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

    input: (T, B, I) ((B, T, I) with ``batch_first``), or the data of a PackedSequence (N, I)
    with its ``batch_sizes``; hx: h0 (L*D, B, K) or (h0, c0) for the LSTM; weights: the
    module's ``_flat_weights`` order.  Returns (output, h_n) or (output, (h_n, c_n))."""
    _check_mode(mode)
    return rnn_on(_route(backend, input), mode, input, hx, weights, num_layers, bias, dropout,
                  training, bidirectional, batch_first, batch_sizes, proj_size)


def rnn_on(be, mode, input, hx, weights, num_layers=1, bias=True, dropout=0.0, training=False,
           bidirectional=False, batch_first=False, batch_sizes=None, proj_size=0):
    """:func:`rnn` on the resolved backend ``be`` ('triton', 'reference' or 'native')."""
    if be == "native":
        # under torch.compile: torch's kernels as one opaque op, which Dynamo need not trace
        # (torch.export and torch.onnx.export trace torch's forward into torch's operators)
        compiled = torch.compiler.is_compiling() and not torch.compiler.is_exporting()
        run = native_ops.rnn if compiled else _native_rnn
        return run(mode, input, hx, weights, num_layers, bias, dropout, training,
                   bidirectional, batch_first, batch_sizes)
    h0, c0 = hx if mode == "lstm" else (hx, None)
    if not _autocasting(input.device.type):
        return _rnn(be, mode, input, h0, c0, weights, num_layers, bias, dropout, training,
                    bidirectional, batch_first, batch_sizes, proj_size)
    (input, h0, c0, *weights), no_autocast = _autocast(mode, "layer", input.device.type,
                                                       [input, h0, c0, *weights])
    with no_autocast:
        return _rnn(be, mode, input, h0, c0, weights, num_layers, bias, dropout, training,
                    bidirectional, batch_first, batch_sizes, proj_size)


def _rnn(be, mode, input, h0, c0, weights, num_layers, bias, dropout, training, bidirectional,
         batch_first, batch_sizes, proj_size):
    D = 2 if bidirectional else 1
    if batch_sizes is not None:
        idx, B = _packed_index(batch_sizes, input.device)
        T = len(batch_sizes)
        x = input.new_zeros(T * B, input.shape[-1]).index_copy(0, idx, input).view(T, B, -1)
    else:
        x = input.transpose(0, 1) if batch_first else input
        T, B = x.shape[0], x.shape[1]
        if T == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
    rev = (_reverse_index(T, B, batch_sizes, x.device)
           if bidirectional and batch_sizes is not None else None)
    per = len(weights) // (num_layers * D)
    fused = D == 2 and be == "triton" and experimental.directions_fused(proj_size > 0)
    hns, cns = [], []
    for layer in range(num_layers):
        outs = []
        if fused:   # experimental: both directions as two stacked members of one call
            k = 2 * layer
            pair = (weights[k * per:(k + 1) * per], weights[(k + 1) * per:(k + 2) * per])
            y, hn, cn = experimental.both_directions(
                mode, (x, _reverse(x, rev)), h0[k:k + 2], None if c0 is None else c0[k:k + 2],
                pair, batch_sizes)
            outs = [y[0], _reverse(y[1], rev)]
            hns += [hn[0], hn[1]]
            cns += [None, None] if cn is None else [cn[0], cn[1]]
        for d in range(0 if fused else D):
            k = layer * D + d
            w = weights[k * per:(k + 1) * per]  # torch's _flat_weights order
            lw = LayerWeights(w[0], w[1], *((w[2], w[3]) if bias else (None, None)),
                              w[-1] if proj_size > 0 else None)
            xin = _reverse(x, rev) if d == 1 else x
            y, hn, cn = _layer(be, mode, xin, h0[k], None if c0 is None else c0[k], lw,
                               batch_sizes)
            outs.append(_reverse(y, rev) if d == 1 else y)
            hns.append(hn)
            cns.append(cn)
        x = outs[0] if D == 1 else torch.cat(outs, dim=-1)
        if dropout > 0 and training and layer < num_layers - 1:
            x = F.dropout(x, p=dropout, training=True)
    if batch_sizes is not None:
        output = x.reshape(T * B, -1).index_select(0, idx)
    else:
        output = x.transpose(0, 1) if batch_first else x
    h_n = torch.stack(hns)
    if mode == "lstm":
        return output, (h_n, torch.stack(cns))
    return output, h_n


def _native_rnn(mode, input, hx, weights, num_layers, bias, dropout, training, bidirectional,
                batch_first, batch_sizes):
    fn = {"lstm": torch._VF.lstm, "gru": torch._VF.gru, "rnn_tanh": torch._VF.rnn_tanh,
          "rnn_relu": torch._VF.rnn_relu}[mode]
    hx_arg = list(hx) if mode == "lstm" else hx
    if batch_sizes is None:
        res = fn(input, hx_arg, weights, bias, num_layers, dropout, training, bidirectional,
                 batch_first)
    else:
        res = fn(input, batch_sizes, hx_arg, weights, bias, num_layers, dropout, training,
                 bidirectional)
    return (res[0], (res[1], res[2])) if mode == "lstm" else (res[0], res[1])


# ---------------------------------------------------------------------------------- the cells
def _cell(mode, input, h, c, w_ih, w_hh, b_ih, b_hh, backend):
    return cell_on(_route(backend, input), mode, input, h, c, w_ih, w_hh, b_ih, b_hh)


def cell_on(be, mode, input, h, c, w_ih, w_hh, b_ih=None, b_hh=None):
    """One step of ``mode`` on the resolved backend ``be``: (h', c') for the LSTM, else h'."""
    if be == "native":
        if mode == "lstm":
            return torch._VF.lstm_cell(input, (h, c), w_ih, w_hh, b_ih, b_hh)
        fn = {"gru": torch._VF.gru_cell, "rnn_tanh": torch._VF.rnn_tanh_cell,
              "rnn_relu": torch._VF.rnn_relu_cell}[mode]
        return fn(input, h, w_ih, w_hh, b_ih, b_hh)
    if not _autocasting(input.device.type):
        return _fused_or_reference_cell(be, mode, input, h, c, w_ih, w_hh, b_ih, b_hh)
    (input, h, c, w_ih, w_hh, b_ih, b_hh), no_autocast = _autocast(
        mode, "cell", input.device.type, [input, h, c, w_ih, w_hh, b_ih, b_hh])
    with no_autocast:
        return _fused_or_reference_cell(be, mode, input, h, c, w_ih, w_hh, b_ih, b_hh)


def _fused_or_reference_cell(be, mode, input, h, c, w_ih, w_hh, b_ih, b_hh):
    if be == "reference":
        if mode == "lstm":
            return reference.lstm_cell(input, h, c, w_ih, w_hh, b_ih, b_hh)
        if mode == "gru":
            return reference.gru_cell(input, h, w_ih, w_hh, b_ih, b_hh)
        return reference.rnn_cell(input, h, w_ih, w_hh, b_ih, b_hh, mode[4:])
    # A cell is a one-step layer: the same fused kernels (rnn_ops.recurrent_step).
    hn, cn = recurrent_step(mode, input, h, c, (w_ih, w_hh, b_ih, b_hh, None))
    return (hn, cn) if mode == "lstm" else hn


def lstm_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, backend=None):
    """One LSTM step on (B, I) input and hx = (h, c); returns (h', c')."""
    return _cell("lstm", input, hx[0], hx[1], w_ih, w_hh, b_ih, b_hh, backend)


def gru_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, backend=None):
    """One GRU step on (B, I) input and hidden (B, H); returns h'."""
    return _cell("gru", input, hx, None, w_ih, w_hh, b_ih, b_hh, backend)


def rnn_tanh_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, backend=None):
    return _cell("rnn_tanh", input, hx, None, w_ih, w_hh, b_ih, b_hh, backend)


def rnn_relu_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, backend=None):
    return _cell("rnn_relu", input, hx, None, w_ih, w_hh, b_ih, b_hh, backend)
