"""``torch.load`` of whole models with fastcells modules in them: a fastcells class is trusted
wherever its torch twin is.

``torch.save(model)`` pickles a model whole (PyTorch's word-language-model example does), and
``torch.load`` then unpickles it with ``weights_only=True`` (torch's default), which builds only
the classes a user has allowlisted (``torch.serialization.add_safe_globals`` or the
``safe_globals`` context manager).  A user who allowlists ``torch.nn.LSTM`` trusts what an LSTM
module is made of; ``fastcells.LSTM`` is that class with another ``forward`` (its pickled state is
torch's plus a ``backend`` string), so the same allowlist loads it: ``fastcells.LSTM`` (GRU, RNN,
LSTMCell, GRUCell, RNNCell) is allowed exactly when its twin in ``fastcells.modules.TWINS`` is, and
the loaded module is fastcells' own class, with its ``backend``.  Nothing is allowed that torch
would refuse: with the twin not allowlisted, the load fails as torch's does (the same
``UnpicklingError``, naming the fastcells class), and ``get_unsafe_globals_in_checkpoint`` reports
the fastcells class then, and only then.

Why a hook: torch has no public way to say "trust this class whenever that one is trusted".
Registering the fastcells classes with ``add_safe_globals`` at import would trust them even where
the user trusted nothing (more permissive than torch), and would show up in the user's
``get_safe_globals()`` and vanish on ``clear_safe_globals()``.  Pickling fastcells modules under
torch's class name would load them back as torch's modules.  So this module wraps the one function
through which torch reads the user's allowlist, ``torch._weights_only_unpickler.
_get_user_allowed_globals`` (the unpickler and ``get_unsafe_globals_in_checkpoint`` both call it
through the module attribute, at each use): the wrapper returns torch's answer plus each fastcells
class whose torch twin is in it.  It fails closed: on a torch without that function nothing is
installed, and fastcells classes then need allowlisting by name, as any class does.
"""
import functools

from torch import _weights_only_unpickler as _unpickler

from .modules import TWINS

__all__ = ["install"]


def _with_twins(user_allowed_globals):
    """``user_allowed_globals`` (torch's ``{path: global}`` of the user's allowlist), plus each
    fastcells class whose torch twin it holds, under the path the pickle names it by."""
    @functools.wraps(user_allowed_globals)
    def allowed():
        rc = user_allowed_globals()
        trusted = {id(v) for v in rc.values()}
        for torch_cls, cls in TWINS.items():
            if id(torch_cls) in trusted:
                rc.setdefault(f"{cls.__module__}.{cls.__qualname__}", cls)
        return rc
    allowed._fastcells_twins = True
    return allowed


def install():
    """Install the hook (once; done when fastcells is imported)."""
    current = getattr(_unpickler, "_get_user_allowed_globals", None)
    if current is None or getattr(current, "_fastcells_twins", False):
        return
    _unpickler._get_user_allowed_globals = _with_twins(current)


install()
