"""A cell type is one value, :class:`Cell`: everything the shared code (the multi-layer,
bidirectional and packed outer loop, the autograd Functions, the custom ops, the modules, the
diagnostics) asks of a cell.  Nothing tests a cell's name.

Adding a cell type: its step kernels and their ``CellKernels`` (a new file in ``kernels/``), its
reference step (:mod:`fastcells.reference`), one ``Cell`` value here, and its tests.
"""
from dataclasses import dataclass, field
from typing import Callable, Dict, Tuple

import torch
from torch import nn

from . import reference
from .kernels import gru as _gru
from .kernels import lstm as _lstm
from .kernels import rnn as _rnn
from .kernels.layer import CellKernels


@dataclass(eq=False)
class Cell:
    """One recurrent cell type.

    ``name``: the functional API's and the custom ops' key; ``torch_mode``: torch.nn.RNNBase's
    ``mode`` for it; ``kernels``: its step kernels and their layout (gates, saved buffers, a
    second state); ``step``: its reference step ``step(x, h, c, weights) -> (h', c' or None)``
    (a ``LayerWeights``); ``native_layer`` / ``native_cell``: torch's own ops (``torch._VF``);
    ``autocast``: what torch's autocast does to it, {(device type, "layer" or "cell"): the dtype
    it computes in, None for the autocast dtype}, a missing entry casting nothing;
    ``schedule``: the time loop its layers run (``kernels.config.schedule``: the step chain)."""
    name: str
    torch_mode: str
    kernels: CellKernels
    step: Callable
    native_layer: Callable
    native_cell: Callable
    autocast: Dict[Tuple[str, str], object] = field(default_factory=dict)
    schedule: str = "step"
    has_cell: bool = field(init=False)   # the state is a pair (h, c), not h alone
    gates: int = field(init=False)

    def __post_init__(self):
        self.has_cell, self.gates = self.kernels.has_cell, self.kernels.gates

    def state(self, hx):
        """(h, c or None) of a state in torch's form: (h, c) for a paired state, else h."""
        return (hx[0], hx[1]) if self.has_cell else (hx, None)

    def hidden(self, h, c):
        """The state in torch's form (see ``state``)."""
        return (h, c) if self.has_cell else h

    def __repr__(self):
        return f"Cell({self.name!r})"


_CUDA_AUTOCAST = {("cuda", "layer"): torch.float16, ("cuda", "cell"): None}
# On CUDA the RNN layers go through cuDNN in float16 even under a bfloat16 autocast; the cells
# follow the autocast dtype.  On CPU only the LSTM and RNN layers and the RNN cells are cast.
LSTM = Cell("lstm", "LSTM", _lstm.KERNELS, reference.lstm_step, torch._VF.lstm,
            torch._VF.lstm_cell, {**_CUDA_AUTOCAST, ("cpu", "layer"): None})
GRU = Cell("gru", "GRU", _gru.KERNELS, reference.gru_step, torch._VF.gru, torch._VF.gru_cell,
           dict(_CUDA_AUTOCAST))
RNN_TANH = Cell("rnn_tanh", "RNN_TANH", _rnn.TANH, reference.rnn_tanh_step, torch._VF.rnn_tanh,
                torch._VF.rnn_tanh_cell,
                {**_CUDA_AUTOCAST, ("cpu", "layer"): None, ("cpu", "cell"): None})
RNN_RELU = Cell("rnn_relu", "RNN_RELU", _rnn.RELU, reference.rnn_relu_step, torch._VF.rnn_relu,
                torch._VF.rnn_relu_cell,
                {**_CUDA_AUTOCAST, ("cpu", "layer"): None, ("cpu", "cell"): None})

CELLS = {c.name: c for c in (LSTM, GRU, RNN_TANH, RNN_RELU)}
BY_TORCH_MODE = {c.torch_mode: c for c in CELLS.values()}


def get(cell):
    """The ``Cell`` for a cell or its name; ValueError for an unknown name."""
    if isinstance(cell, Cell):
        return cell
    found = CELLS.get(cell)
    if found is None:
        raise ValueError(f"unknown recurrent mode {cell!r}; expected one of {', '.join(CELLS)}")
    return found


def of_module(module):
    """The ``Cell`` of a torch.nn (or fastcells) RNN, LSTM, GRU module or cell, else None."""
    if isinstance(module, nn.RNNBase):
        return BY_TORCH_MODE.get(module.mode)
    if isinstance(module, nn.LSTMCell):
        return LSTM
    if isinstance(module, nn.GRUCell):
        return GRU
    if isinstance(module, nn.RNNCell):
        return RNN_TANH if module.nonlinearity == "tanh" else RNN_RELU
    return None
