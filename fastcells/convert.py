"""fastcells.convert: swap torch.nn recurrent modules in a model for their fastcells twins."""
from torch import nn

from .backend import _check_name
from .modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell

_TWINS = {nn.LSTM: LSTM, nn.GRU: GRU, nn.RNN: RNN,
          nn.LSTMCell: LSTMCell, nn.GRUCell: GRUCell, nn.RNNCell: RNNCell}


def _twin(module, backend):
    cls = _TWINS[type(module)]
    new = cls.__new__(cls)
    # The same attribute dict contents: the very same Parameter objects, buffers, hooks and
    # flags, so an optimizer built on the old module keeps training the new one.
    new.__dict__.update(module.__dict__)
    new._init_backend(backend)
    return new


def convert(model, backend=None):
    """Replace every torch.nn LSTM/GRU/RNN and LSTMCell/GRUCell/RNNCell in ``model`` (exact
    types, not subclasses) with its fastcells twin sharing the same parameters, and return the
    model (or the twin, when ``model`` itself is such a module).  ``backend`` sets the twins'
    ``backend=`` (None: follow ``use_backend`` / ``FASTCELLS_BACKEND``)."""
    if backend is not None:
        _check_name(backend)
    if type(model) in _TWINS:
        return _twin(model, backend)
    for name, child in list(model.named_children()):
        if type(child) in _TWINS:
            setattr(model, name, _twin(child, backend))
        else:
            convert(child, backend)
    return model
