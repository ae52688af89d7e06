"""LayerWeights: one layer-direction's weights, the argument every layer primitive takes.

``reference.layer``, ``rnn_ops.recurrent_layer`` and ``kernels.recurrence.layer_forward`` all
take ``(mode, x, h0, c0, weights, batch_sizes=None)``; flat argument lists (the autograd
Functions, the custom ops' schemas) keep this order: x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
batch_sizes.  The kernels' launchers, which know nothing of fastcells, unpack any 5-sequence in
this order.
"""
from typing import NamedTuple, Optional

from torch import Tensor


class LayerWeights(NamedTuple):
    """torch's per-layer weights: W_ih (G*H, I), W_hh (G*H, K), the biases (G*H,) or None, and
    the LSTM's projection W_hr (K, H) or None (then K == H)."""
    w_ih: Tensor
    w_hh: Tensor
    b_ih: Optional[Tensor] = None
    b_hh: Optional[Tensor] = None
    w_hr: Optional[Tensor] = None
