"""Let torch.compile trace fastcells' recurrent modules, where they do not run torch's own kernels.

Dynamo refuses every instance of torch.nn.RNN/GRU/LSTM (an isinstance check, because torch's RNN
kernels are opaque to it) unless ``torch._dynamo.config.allow_rnn`` is set, and setting that
globally changes how torch's own RNN modules compile.  A fastcells module subclasses torch's; on
the triton and reference backends it runs custom ops with fake implementations or plain
PyTorch math, which Dynamo traces.  So while Dynamo wraps a fastcells module that will not run
torch's own forward, ``allow_rnn`` is on; a fastcells module on the native backend, and every
torch module, compile exactly as torch.nn's do (a graph break at the module).

The patch is applied when Dynamo's module builder is first imported (``torch.compile`` imports
it), not when fastcells is: importing Dynamo costs about as much as importing torch.
"""
import functools
import importlib.abc
import sys
import warnings

import torch

_BUILDER = "torch._dynamo.variables.builder"


def _warn(why):
    warnings.warn(
        f"fastcells: cannot let torch.compile trace fastcells' LSTM/GRU/RNN on torch "
        f"{torch.__version__} ({why}); torch.compile graph-breaks at them (torch's own modules "
        "are affected no differently). fastcells is tested with torch 2.11 and 2.13.",
        RuntimeWarning, stacklevel=3)


def _runs_native(module):
    """Whether ``module`` will run torch's own forward when Dynamo traces it (its backend in
    force, on its parameters' device)."""
    from .backend import default_backend
    name = module.backend if module.backend is not None else default_backend()
    if name != "auto":
        return name == "native"
    return False   # auto under torch.compile: triton on CUDA, reference on CPU (backend.resolve)


def _patch(builder, module_types):
    """Wrap ``VariableBuilder.wrap_module`` of Dynamo's ``builder`` module (once); returns
    whether the patch is in place.  On a torch whose Dynamo internals moved, warn once and
    leave Dynamo as it is."""
    try:
        from torch._dynamo import config
        VariableBuilder = builder.VariableBuilder
        original = VariableBuilder.wrap_module
        config.allow_rnn  # noqa: B018  (the flag the patch turns on)
    except Exception as e:  # noqa: BLE001  (any torch: fastcells must still work eagerly)
        _warn(f"{type(e).__name__}: {e}")
        return False
    if getattr(original, "_fastcells", False):
        return True

    @functools.wraps(original)
    def wrap_module(self, value):
        if isinstance(value, module_types) and not config.allow_rnn and not _runs_native(value):
            with config.patch(allow_rnn=True):
                return original(self, value)
        return original(self, value)

    wrap_module._fastcells = True
    VariableBuilder.wrap_module = wrap_module
    return True


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds Dynamo's builder module with the other finders and patches it once it has run."""

    def __init__(self, module_types):
        self.module_types = module_types

    def find_spec(self, name, path, target=None):
        if name != _BUILDER:
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                break
        else:
            return None
        exec_module, module_types = spec.loader.exec_module, self.module_types

        def exec_and_patch(module):
            exec_module(module)
            _patch(module, module_types)
        spec.loader.exec_module = exec_and_patch
        return spec


def install(module_types):
    """Patch Dynamo now if its builder is imported (returns whether the patch is in place),
    else when it is (returns True)."""
    if _BUILDER in sys.modules:
        return _patch(sys.modules[_BUILDER], module_types)
    if not any(isinstance(f, _PatchOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport(module_types))
    return True
