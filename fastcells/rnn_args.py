"""The flat argument lists of the layer's autograd Functions, and the one helper each that
builds them from the named structures (:mod:`fastcells.weights`) and back.

autograd and torch.func address a Function's arguments by position (``needs_input_grad``,
``in_dims``, the gradients ``backward`` returns): a NamedTuple gives those positions names.
"""
from typing import Any, NamedTuple, Optional

from torch import Tensor

from .weights import LayerBuffers, LayerGrads, LayerInputs, LayerWeights


# The layer's differentiable inputs, in the order every flat argument list keeps.
_INPUTS = [("x", Tensor), ("h0", Tensor), ("c0", Optional[Tensor]), ("w_ih", Tensor),
           ("w_hh", Tensor), ("b_ih", Optional[Tensor]), ("b_hh", Optional[Tensor]),
           ("w_hr", Optional[Tensor])]


class LayerArgs(NamedTuple("LayerArgs", [("cell", Any), *_INPUTS,
                                          ("batch_sizes", Optional[Tensor])])):
    """RNNLayer's arguments: the cell, then the ``LayerInputs`` flattened."""
    __slots__ = ()

    @staticmethod
    def of(cell, inputs):
        x, h0, c0, w, batch_sizes = inputs
        return LayerArgs(cell, x, h0, c0, *w, batch_sizes)

    def inputs(self):
        return _inputs(self)


def _inputs(args):
    """The ``LayerInputs`` in a LayerArgs or BackwardArgs."""
    return LayerInputs(args.x, args.h0, args.c0,
                       LayerWeights(args.w_ih, args.w_hh, args.b_ih, args.b_hh, args.w_hr),
                       args.batch_sizes)


# The positions of the layer's differentiable inputs (x ... w_hr) and of its weights.
INPUTS = slice(LayerArgs._fields.index("x"), LayerArgs._fields.index("batch_sizes"))
WEIGHTS = slice(LayerArgs._fields.index("w_ih"), LayerArgs._fields.index("batch_sizes"))


def flat_inputs(inputs):
    """The differentiable inputs (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr) in order."""
    x, h0, c0, w, _ = inputs
    return (x, h0, c0, *w)


def inputs_of(flat, batch_sizes):
    """The inverse of :func:`flat_inputs`."""
    x, h0, c0, *w = flat
    return LayerInputs(x, h0, c0, LayerWeights(*w), batch_sizes)


def needs_of(needs_input_grad, args_type):
    """Which of the layer's gradients are wanted (``LayerGrads`` of bools), from a Function's
    ``needs_input_grad`` over ``args_type``'s fields."""
    at = args_type._fields.index("x")
    return LayerGrads(*needs_input_grad[at:at + 8])


class BackwardArgs(NamedTuple("BackwardArgs", [
        ("cell", Any), ("batch_sizes", Optional[Tensor]), ("needs", LayerGrads), ("groups", int),
        *_INPUTS, ("y", Tensor), ("cs", Optional[Tensor]), ("saved", Optional[Tensor]),
        ("m", Optional[Tensor]), ("dy", Tensor), ("dcn", Optional[Tensor])])):
    """RNNLayerBackward's arguments: what the layer's backward reads.  ``needs``: which
    gradients are wanted; ``groups`` > 1: the batch holds that many interleaved problems (a
    folded vmap)."""
    __slots__ = ()

    @staticmethod
    def of(cell, needs, inputs, buffers, dy, dcn):
        x, h0, c0, w, batch_sizes = inputs
        return BackwardArgs(cell, batch_sizes, needs, 1, x, h0, c0, *w, *buffers, dy, dcn)

    def inputs(self):
        return _inputs(self)

    def buffers(self):
        return LayerBuffers(self.y, self.cs, self.saved, self.m)


# The positions of RNNLayerBackward's tensors (x ... dcn).
BACKWARD_TENSORS = slice(BackwardArgs._fields.index("x"), len(BackwardArgs._fields))


def unaliased(grads):
    """``grads`` (``LayerGrads``) with db_hh its own tensor where it is db_ih's (one bias sum
    serves both): what torch.func hands a user, or a custom op returns, must not alias (an
    in-place clip of two .grad fields sharing storage would scale it twice)."""
    if grads.db_hh is not None and grads.db_hh is grads.db_ih:
        return grads._replace(db_hh=grads.db_ih.clone())
    return grads
