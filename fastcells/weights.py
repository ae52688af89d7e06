"""The named structures of one layer call (defined with the kernels, which take them too):
``LayerWeights``, ``LayerInputs``, ``LayerBuffers``, ``StepGrads``, ``LayerGrads``.

Flat argument lists (the autograd Functions, the custom ops' schemas) keep the order x, h0, c0,
w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes; :mod:`fastcells.rnn_args` holds the one helper each
that flattens and rebuilds them.
"""
from .kernels.layer import (ALL, LayerBuffers, LayerGrads, LayerInputs, LayerWeights,  # noqa: F401
                            StepGrads)
