"""Let torch.compile trace fastcells' recurrent modules.

Dynamo refuses every instance of torch.nn.RNN/GRU/LSTM (an isinstance check, because cuDNN's
RNN kernels are opaque to it) unless ``torch._dynamo.config.allow_rnn`` is set, and setting that
globally changes how torch's own RNN modules compile.  fastcells' modules subclass torch's but
run on custom ops with fake implementations, so the check is lifted for them alone: while Dynamo
wraps a fastcells module, ``allow_rnn`` is on; torch's own modules see no difference.
"""
import functools


def install(module_types):
    try:
        from torch._dynamo import config
        from torch._dynamo.variables.builder import VariableBuilder
    except ImportError:  # an older or newer Dynamo: fastcells modules then graph-break
        return False
    original = VariableBuilder.wrap_module
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
