"""Backend choice: which implementation a fastcells op runs.

``auto``      triton for CUDA tensors, native otherwise (the default)
``triton``    the fused Triton kernels (CPU tensors only under TRITON_INTERPRET=1)
``reference`` the plain-PyTorch math in :mod:`fastcells.reference`
``native``    torch's own ops (cuDNN/oneDNN RNNs, torch.nn.utils.clip_grad_norm_)

Under ``torch.compile``, ``auto`` on CPU tensors stays torch's own kernels, as one opaque op per
multi-layer call (:mod:`fastcells.native_ops`: no graph break, where Dynamo graph-breaks at
torch.nn's RNN modules); under ``torch.export`` it is ``reference``, the plain-PyTorch math, so an
exported program holds torch's operators only.  A module built with (or run under) an explicit
``native`` compiles exactly as torch.nn's does.

``FASTCELLS_BACKEND`` sets the default; it is read, like every switch, by
:mod:`fastcells.kernels.config`.
"""
import contextlib
import contextvars
import os
import threading

import torch

from .kernels import config

BACKENDS = config.BACKEND.choices
ENV_VAR = config.BACKEND.var

# The innermost use_backend(): a ContextVar, so each thread and each asyncio task sees its own.
_current = contextvars.ContextVar("fastcells_backend", default=None)
# The same name per thread, for code that torch.compile traces: Dynamo cannot read a ContextVar,
# but it reads a thread-local's attribute and guards on its value (a compiled function retraces
# when the backend in force changes).  use_backend() keeps both.
_traced = threading.local()
_is_compiling = torch.compiler.is_compiling
_is_exporting = torch.compiler.is_exporting


def _check_name(name):
    if name not in BACKENDS:
        raise ValueError(f"unknown fastcells backend {name!r}; expected one of {', '.join(BACKENDS)}")
    return name


def default_backend():
    """The backend in force: the innermost ``use_backend``, else ``FASTCELLS_BACKEND``, else auto."""
    name = getattr(_traced, "name", None) if _is_compiling() else _current.get()
    if name is not None:
        return name
    return config.read(config.BACKEND)


@contextlib.contextmanager
def use_backend(name):
    """Run the enclosed fastcells ops on backend ``name`` (modules built with an explicit
    ``backend=`` keep theirs)."""
    token = _current.set(_check_name(name))
    outer = getattr(_traced, "name", None)
    _traced.name = name
    try:
        yield name
    finally:
        _current.reset(token)
        _traced.name = outer


def interpreter_enabled():
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve(backend, tensor):
    """Resolve ``backend`` (None means the default) to a concrete one for ``tensor``'s device.
    Called once per call, at the module or functional entry; what it returns is passed down."""
    name = default_backend() if backend is None else backend
    if name == "native" or name == "reference":
        return name
    if name == "auto":
        if tensor.is_cuda:
            return "triton"
        return "reference" if _is_exporting() else "native"
    if name == "triton" and not tensor.is_cuda and not interpreter_enabled():
        raise RuntimeError(
            f"fastcells backend 'triton' needs CUDA tensors, got a tensor on {tensor.device}; "
            "set TRITON_INTERPRET=1 (before importing triton) to run the kernels on CPU through "
            "Triton's interpreter, or use backend 'native' or 'reference'"
        )
    if name != "triton":
        _check_name(name)
    return name
