"""What one recurrent layer call takes and gives: small named structures that the launchers
(kernels.recurrence), the autograd Functions and the reference math all pass along.

One layer, one direction.  Shapes: T steps, B rows, I inputs, H hidden units, G gates per unit,
K the output width (H, or the LSTM's projection size); every tensor may carry a leading member
dimension M (kernels.recurrence: stacked members).  Absent is None, everywhere.
"""
from dataclasses import dataclass, field
from typing import NamedTuple, Optional

from torch import Tensor


@dataclass(frozen=True, eq=False)   # hashed by identity: a CUDA graph's key
class CellKernels:
    """One cell type's step kernels and what the launchers must know of it (each kernel family
    defines its own: kernels.lstm.KERNELS, ...)."""
    gates: int          # gate blocks of H in W_ih / W_hh
    saved: int          # blocks of H the forward saves per step for the backward (0: none)
    fwd: object         # the forward step kernel
    bwd: object         # the backward step kernel
    has_cell: bool = False      # a second state c (the LSTM)
    split_dgates: bool = False  # x-side and h-side gate gradients differ (the GRU)
    consts: dict = field(default_factory=dict)  # compile-time constants both kernels take


class LayerWeights(NamedTuple):
    """torch's per-layer weights: W_ih (G*H, I), W_hh (G*H, K), the biases (G*H,) or None, and
    the LSTM's projection W_hr (K, H) or None (then K == H)."""
    w_ih: Tensor
    w_hh: Tensor
    b_ih: Optional[Tensor] = None
    b_hh: Optional[Tensor] = None
    w_hr: Optional[Tensor] = None


class LayerInputs(NamedTuple):
    """x (T, B, I), or (B, I) for one step without the time dimension (a cell); h0 (B, K); c0
    (B, H) for the LSTM, else None; weights; batch_sizes (T,) rows active per step (packed
    sequences, sorted by decreasing length) or None."""
    x: Tensor
    h0: Tensor
    c0: Optional[Tensor]
    weights: LayerWeights
    batch_sizes: Optional[Tensor] = None


class LayerBuffers(NamedTuple):
    """What the forward returns and the backward reads: y (T, B, K) the outputs (slot T-1 is
    every row's final state); cs (T, B, H) the LSTM's cell states, in the accumulation dtype (in
    x's dtype for a single step), else None; saved the per-step gates the backward reads (None
    for the RNN); m (T, B, H) the projected LSTM's output before its projection, else None."""
    y: Tensor
    cs: Optional[Tensor]
    saved: Optional[Tensor]
    m: Optional[Tensor]


class StepGrads(NamedTuple):
    """What the backward time loop returns: dgx (T, B, G*H) the gate gradients on the input
    side, dgh on the recurrent side (the same tensor but for the GRU), carry (B, K) the part of
    dL/dh0 not yet through W_hh, dc (B, H) dL/dc0 (LSTM, else None), dhs (T, B, K) dL/dh_t of
    the projected LSTM (else None); carry and dc in the accumulation dtype."""
    dgx: Tensor
    dgh: Tensor
    carry: Tensor
    dc: Optional[Tensor]
    dhs: Optional[Tensor]


class LayerGrads(NamedTuple):
    """The layer's gradients, in its inputs' order (x, h0, c0, then the weights); a gradient
    not wanted, or of an absent input, is None.  Of bools: which gradients are wanted."""
    dx: Optional[Tensor]
    dh0: Optional[Tensor]
    dc0: Optional[Tensor]
    dw_ih: Optional[Tensor]
    dw_hh: Optional[Tensor]
    db_ih: Optional[Tensor]
    db_hh: Optional[Tensor]
    dw_hr: Optional[Tensor]


ALL = LayerGrads(*(True,) * 8)
