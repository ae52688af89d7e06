"""fastcells: fused Triton kernels for LSTM, GRU and RNN cells and clip-by-global-norm,
drop-in for torch.nn."""
from . import diagnostics, functional, reference
from .backend import use_backend
from .convert import convert
from .clip import clip_grad_norm_, clip_grads_with_norm_, get_total_norm
from .modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell
from . import serialization  # torch.load: a fastcells class is trusted where its twin is
from . import quantization  # quantize_dynamic: a fastcells module quantizes as its twin

__all__ = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "use_backend",
           "functional", "reference", "diagnostics", "convert", "clip_grad_norm_", "clip_grads_with_norm_", "get_total_norm"]
__version__ = "0.1.0"
