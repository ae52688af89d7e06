"""Let torch.compile trace fastcells' recurrent modules.

Dynamo refuses every instance of torch.nn.RNN/GRU/LSTM (an isinstance check, because cuDNN's
RNN kernels are opaque to it) unless ``torch._dynamo.config.allow_rnn`` is set, and setting that
globally changes how torch's own RNN modules compile.  fastcells' modules subclass torch's but
run on custom ops with fake implementations, so the check is lifted for them alone: while Dynamo
wraps a fastcells module, ``allow_rnn`` is on; torch's own modules see no difference.
"""
import functools
import warnings

import torch


def _warn(why):
    warnings.warn(
        f"fastcells: cannot let torch.compile trace fastcells' LSTM/GRU/RNN on torch "
        f"{torch.__version__} ({why}); torch.compile graph-breaks at them (torch's own modules "
        "are affected no differently). fastcells is tested with torch 2.11 and 2.13.",
        RuntimeWarning, stacklevel=3)


def install(module_types):
    """Patch Dynamo once; returns whether the patch is in place.  On a torch whose Dynamo
    internals moved, warn once (at import) and leave Dynamo as it is."""
    try:
        from torch._dynamo import config
        from torch._dynamo.variables.builder import VariableBuilder
        original = VariableBuilder.wrap_module
        config.allow_rnn  # noqa: B018  (the flag the patch turns on)
    except Exception as e:  # noqa: BLE001  (any torch: fastcells must still import)
        _warn(f"{type(e).__name__}: {e}")
        return False
    if getattr(original, "_fastcells", False):
        return True

    @functools.wraps(original)
    def wrap_module(self, value):
        if isinstance(value, module_types) and not config.allow_rnn:
            with config.patch(allow_rnn=True):
                return original(self, value)
        return original(self, value)

    wrap_module._fastcells = True
    VariableBuilder.wrap_module = wrap_module
    return True
