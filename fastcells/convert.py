"""fastcells.convert: swap torch.nn recurrent modules in a model for their fastcells twins."""
import warnings

from torch import nn
from torch.nn.utils import parametrize

from .backend import _check_name
from .modules import TWINS, twin

_FASTCELLS = tuple(TWINS.values())
_RECURRENT = (nn.RNNBase, nn.RNNCellBase)


def _torch_type(module):
    """torch's class of ``module``: its own, or the one under a parametrization's class."""
    cls = type(module)
    if parametrize.is_parametrized(module):
        cls = cls.__bases__[0]
    return cls


def convert(model, backend=None):
    """Replace every torch.nn LSTM/GRU/RNN and LSTMCell/GRUCell/RNNCell in ``model`` with its
    fastcells twin and return the model (or the twin, when ``model`` itself is such a module).

    The twin holds the very same Parameter, buffer and submodule objects (an optimizer built on
    the old model keeps training the new one) in containers of its own; a parametrized module
    (``torch.nn.utils.parametrize``, e.g. weight drop) stays parametrized; a module used in
    several places becomes one twin used in all of them.  Subclasses of torch's recurrent
    modules are left alone (their forward may differ from torch's), with a warning naming them.
    ``backend`` sets the twins' ``backend=`` (None: follow ``use_backend`` /
    ``FASTCELLS_BACKEND``)."""
    if backend is not None:
        _check_name(backend)
    memo, skipped = {}, []
    out = _convert(model, backend, memo, skipped, "")
    if skipped:
        warnings.warn("fastcells.convert left these subclasses of torch's recurrent modules "
                      "unconverted (their forward is their own): "
                      + ", ".join(f"{path or '(the model)'} ({cls})" for path, cls in skipped),
                      stacklevel=2)
    return out


def _convert(module, backend, memo, skipped, path):
    if id(module) in memo:
        return memo[id(module)]
    cls = _torch_type(module)
    if cls in TWINS:
        new = memo[id(module)] = twin(module, TWINS[cls], backend)
        return new
    memo[id(module)] = module
    if isinstance(module, _RECURRENT) and not isinstance(module, _FASTCELLS):
        skipped.append((path, type(module).__qualname__))
    for name, child in list(module._modules.items()):
        if child is not None:
            new = _convert(child, backend, memo, skipped, f"{path}.{name}" if path else name)
            if new is not child:
                setattr(module, name, new)
    return module
