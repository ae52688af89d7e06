"""Drop-in subclasses of torch.nn.LSTM/GRU/RNN and their cells.

Only ``forward`` changes (plus an optional ``backend=``): parameters, ``state_dict`` and hooks
stay torch's; ``repr`` is torch's with the class named ``fastcells.LSTM`` (etc.).  Backend
'native' is exactly torch's own forward.
"""
import copy
import weakref

import torch
import torch.fx
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.rnn import PackedSequence

from . import _dynamo_support, cells, functional, onnx_export
from .backend import _check_name, resolve


# A module's own containers: a twin gets new ones holding the same objects, so registering a
# parameter, buffer or submodule on one does not register it on the other.  Hook dicts stay
# shared, so a handle taken before conversion still removes its hook.
_STATE = ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set",
          "_flat_weights", "_flat_weights_names", "_all_weights")


def twin(module, cls, backend=None):
    """A ``cls`` instance with ``module``'s state: the very same Parameter, buffer and
    submodule objects, flags and hooks.  A parametrized module's twin is parametrized the same
    way (torch keeps a parametrized module's properties on a class made for that module)."""
    if parametrize.is_parametrized(module):
        ns = {k: v for k, v in vars(type(module)).items() if k not in ("__dict__", "__weakref__")}
        cls = type(f"Parametrized{cls.__name__}", (cls,), ns)
    new = cls.__new__(cls)
    new.__dict__.update(module.__dict__)
    for k in _STATE:
        if k in new.__dict__:
            new.__dict__[k] = copy.copy(module.__dict__[k])
    if isinstance(new, _Backend):
        new._init_backend(backend)
    else:
        new.__dict__.pop("backend", None)
    return new


def _mixed_dtypes(input, hx):
    """A state whose dtype is not the input's: torch's own forward then decides (its error,
    worded as on that device, or autocast's casts)."""
    if hx is None:
        return False
    if isinstance(hx, torch.Tensor):
        return hx.dtype != input.dtype
    return any(isinstance(s, torch.Tensor) and s.dtype != input.dtype for s in hx)


def _proxies(input, hx):
    states = hx if isinstance(hx, (tuple, list)) else (hx,)
    return [v for v in (input, *states) if isinstance(v, torch.fx.Proxy)]


def _fx_tracing(input, hx, _proxy=torch.fx.Proxy):
    if isinstance(input, _proxy) or isinstance(hx, _proxy):
        return True
    return isinstance(hx, (tuple, list)) and any(isinstance(v, _proxy) for v in hx)


_BACKENDS_DOC = """
    ``backend`` (keyword only, the one argument torch's has not) picks what runs:

    * ``None`` (the default): the innermost ``fastcells.use_backend(...)``, else the
      ``FASTCELLS_BACKEND`` environment variable, else ``'auto'``;
    * ``'auto'``: the fused Triton kernels on CUDA tensors; on CPU tensors torch's own forward
      (the kernels torch.nn runs there), and under ``torch.compile`` fastcells' reference math,
      which compiles without a graph break;
    * ``'triton'``: the kernels; CPU tensors only under ``TRITON_INTERPRET=1`` (Triton's
      interpreter: slow, for tests), else a RuntimeError that says so;
    * ``'reference'``: the plain-PyTorch math of :mod:`fastcells.reference`;
    * ``'native'``: exactly torch's own forward, eager and under ``torch.compile``.
"""

_LIMITS_DOC = """
    A differentiable backward (``create_graph=True``) and forward-mode tangents are computed
    through the reference math (correct, not fast).  ``torch.jit.script`` scripts torch's own
    {torch_name} on the same Parameters (the kernels are Python).  ``repr`` names the class
    ``fastcells.{name}``.  Other limits: docs/limits.md in the repository.
"""


def _layer_doc(name, what="", more=""):
    return f"""Drop-in for :class:`torch.nn.{name}`{what} on fastcells' fused Triton kernels.

    The same constructor arguments, parameters, ``state_dict`` and forward (input, optional
    ``hx``, unbatched input, ``PackedSequence`` in and out) as torch's: see
    ``help(torch.nn.{name})``.  A ``torch.nn.{name}``'s ``state_dict`` loads into it and back,
    and ``fastcells.convert(model)`` swaps torch's modules for these on the same Parameters.
{_BACKENDS_DOC}
    On CUDA the input projection is one GEMM over every step, each time step one fused kernel
    (the recurrent matmul, the biases, the gates, the state update), and a padded call of two
    or more steps replays a cached CUDA graph (``FASTCELLS_CUDA_GRAPHS=0`` turns graphs off;
    their static buffers hold more memory than cuDNN uses).  Packed batches launch step by
    step, without graphs, and are slower than cuDNN's packed path.{more}
{_LIMITS_DOC.format(torch_name=name, name=name)}"""


def _cell_doc(name, layer):
    return f"""Drop-in for :class:`torch.nn.{name}`: one time step on a fused Triton kernel.

    The same constructor arguments, parameters, ``state_dict`` and forward (input, optional
    state, unbatched input) as torch's: see ``help(torch.nn.{name})``.
{_BACKENDS_DOC}
    On CUDA a step is one fused launch forward (both matmuls, the biases, the gates and the
    state update) and one launch plus the gradient GEMMs backward.  A single step is bound by
    host time, and on a GPU it can be slower than torch's own fused cell
    (docs/performance.md); for a whole sequence use one :class:`fastcells.{layer}` call (one
    input GEMM for every step, the steps replayed as a CUDA graph).
{_LIMITS_DOC.format(torch_name=name, name=name)}"""


def _signature(torch_init, drop=("self", "mode"), add=()):
    """torch's constructor arguments (those of ``torch_init`` less ``drop``; ``add``: (name,
    default, after) to put in) and fastcells' keyword-only ``backend``."""
    import inspect
    params = [p for n, p in inspect.signature(torch_init).parameters.items() if n not in drop]
    for name, default, after in add:
        i = next(i for i, p in enumerate(params) if p.name == after) + 1
        params.insert(i, inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                           default=default))
    backend = inspect.Parameter("backend", inspect.Parameter.KEYWORD_ONLY, default=None)
    return inspect.Signature(params + [backend])


class _ClassSignature:
    """``cls.__signature__``, what ``help(cls)`` and ``inspect.signature(cls)`` show: torch's
    constructor arguments plus ``backend`` (torch's LSTM, GRU and RNN declare only ``*args,
    **kwargs``).  An instance has none, so ``inspect.signature(module)`` is still forward's."""

    def __init__(self, make):
        self._make = make

    def __get__(self, obj, cls=None):
        if obj is not None:
            raise AttributeError("__signature__")
        return self._make()


class _Backend:
    def _torch_class(self):
        # torch's own class (a parametrized module's class is made in torch.nn.utils: skip it)
        return next(c for c in type(self).__mro__ if c.__module__.startswith("torch.nn.modules"))

    def _torch_name(self):
        # torch's class name, as torch spells it in its error messages
        return self._torch_class().__name__

    def __prepare_scriptable__(self):
        """torch.jit.script scripts torch's own module, sharing this module's Parameters:
        fastcells' kernels are Python, not TorchScript."""
        return twin(self, self._torch_class())

    def _fx_leaf_call(self, input, hx):
        """Under torch.fx.symbolic_trace: record this module as one call_module node (a leaf,
        as torch.nn's own modules are), so the traced GraphModule calls it: fastcells' kernels."""
        tracer = _proxies(input, hx)[0].tracer
        path = tracer.path_of_module(self)
        if path == "":  # the traced root itself: the GraphModule gets a twin to call
            path = "fastcells_module"
        return tracer.create_proxy("call_module", path, (input, hx), {})

    @property
    def fastcells_module(self):
        # Read once by torch.fx's GraphModule when this module is the traced root.
        return twin(self, type(self), self.backend)

    def __init__(self, *args, backend=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_backend(backend)

    def _init_backend(self, backend):
        self.backend = None if backend is None else _check_name(backend)

    def extra_repr(self):
        s = super().extra_repr()
        return s if self.backend is None else f"{s}, backend={self.backend!r}"

    def __repr__(self):
        # torch's repr with the class named as fastcells': "fastcells.LSTM(3, 5)"
        return "fastcells." + super().__repr__()


class _RecurrentNet(_Backend):
    """forward() of the multi-layer modules, mirroring torch's argument handling."""

    def forward(self, input, hx=None):
        if onnx_export.exporting():  # torch.onnx.export: torch's forward, ONNX's own RNN ops
            return super().forward(input, hx)
        if _fx_tracing(input, hx):
            return self._fx_leaf_call(input, hx)
        data = input.data if isinstance(input, PackedSequence) else input
        be = resolve(self.backend, data)
        # native: torch's forward, except where torch.compile traces this one (its kernels
        # then run as one opaque op: functional.rnn_on)
        if be == "native" and not torch.compiler.is_compiling() or _mixed_dtypes(data, hx):
            return super().forward(input, hx)
        weights = self._current_flat_weights()
        cell = cells.BY_TORCH_MODE[self.mode]
        lstm = cell.has_cell
        num_dir = 2 if self.bidirectional else 1
        real_hidden = self.proj_size if self.proj_size > 0 else self.hidden_size
        batch_sizes = sorted_indices = unsorted_indices = None
        is_batched = True
        if isinstance(input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = input
            max_batch = int(batch_sizes[0])
        else:
            if input.dim() not in (2, 3):
                name = self._torch_name()
                noun = "tensor instead" if name == "RNN" else "instead"
                raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D {noun}")
            is_batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            if not is_batched:
                input = input.unsqueeze(batch_dim)
            max_batch = input.size(0) if self.batch_first else input.size(1)
        if hx is None:
            h = torch.zeros(self.num_layers * num_dir, max_batch, real_hidden,
                            dtype=input.dtype, device=input.device)
            if lstm:
                c = torch.zeros(self.num_layers * num_dir, max_batch, self.hidden_size,
                                dtype=input.dtype, device=input.device)
                hx = (h, c)
            else:
                hx = h
        elif batch_sizes is None:
            hx = self._check_hx_dims(hx, is_batched, lstm)
        self.check_forward_args(input, hx, batch_sizes)
        if batch_sizes is not None:
            hx = self.permute_hidden(hx, sorted_indices)
        if lstm and len(hx) != 2:
            raise RuntimeError("lstm expects two hidden states")
        output, hidden = functional.rnn_on(
            be, cell, input, hx, weights,
            functional.Net(self.num_layers, self.bias, self.dropout, self.training,
                           self.bidirectional, self.batch_first, self.proj_size), batch_sizes)
        if batch_sizes is not None:
            return (PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices),
                    self.permute_hidden(hidden, unsorted_indices))
        if not is_batched:
            output = output.squeeze(1 if not self.batch_first else 0)
            hidden = (hidden[0].squeeze(1), hidden[1].squeeze(1)) if lstm else hidden.squeeze(1)
        return output, hidden

    def _current_flat_weights(self):
        """The weights in torch's ``_flat_weights`` order, as they are now.  torch's
        _update_flat_weights also compacts the weights for cuDNN (flatten_parameters), which
        the kernels do not need and which reads data pointers: under torch.func on CUDA the
        weights are wrappers that have none.  Traced code (torch.compile) reads the attributes
        and keeps nothing: the cache's weak references are module state that Dynamo would
        guard on, and a weight assigned in the traced function (weight drop) kills them."""
        # hasattr, then getattr, as torch does: a parametrized weight (weight drop) draws its
        # random numbers at each access, and the draws must match torch's module
        if torch.compiler.is_compiling():
            return [getattr(self, n) if hasattr(self, n) else None
                    for n in self._flat_weights_names]
        if not torch.jit.is_scripting() and self._weights_have_changed():
            self._flat_weights = [getattr(self, n) if hasattr(self, n) else None
                                  for n in self._flat_weights_names]
            self._flat_weight_refs = [None if w is None else weakref.ref(w)
                                      for w in self._flat_weights]
        return self._flat_weights

    @staticmethod
    def _check_hx_dims(hx, is_batched, lstm):
        want = 3 if is_batched else 2
        kind = "batched 3-D" if is_batched else "unbatched 2-D"
        if lstm:
            if hx[0].dim() != want or hx[1].dim() != want:
                raise RuntimeError(
                    f"For {kind} input, hx and cx should also be {want}-D but got "
                    f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
            return hx if is_batched else (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
        if hx.dim() != want:
            raise RuntimeError(
                f"For {kind} input, hx should also be {want}-D but got {hx.dim()}-D tensor")
        return hx if is_batched else hx.unsqueeze(1)


class LSTM(_RecurrentNet, nn.LSTM):
    __doc__ = _layer_doc("LSTM", more="\n    With ``proj_size > 0`` a layer launches step by "
                         "step too (the projection is a torch\n    matmul per step).")
    __signature__ = _ClassSignature(lambda: _signature(nn.RNNBase.__init__))


class GRU(_RecurrentNet, nn.GRU):
    __doc__ = _layer_doc("GRU")
    __signature__ = _ClassSignature(
        lambda: _signature(nn.RNNBase.__init__, drop=("self", "mode", "proj_size")))


class RNN(_RecurrentNet, nn.RNN):
    __doc__ = _layer_doc("RNN", " (tanh or relu)")
    __signature__ = _ClassSignature(
        lambda: _signature(nn.RNNBase.__init__, drop=("self", "mode", "proj_size"),
                           add=(("nonlinearity", "tanh", "num_layers"),)))


# ---------------------------------------------------------------------------------- cells
def _check_cell_args(input, hiddens, input_size, hidden_size):
    """ATen's checks for the fused cells, with its messages."""
    B = input.shape[0]
    if input.shape[1] == input_size and all(h.shape == (B, hidden_size) for h in hiddens):
        return
    if input.size(1) != input_size:
        raise RuntimeError(
            f"input has inconsistent input_size: got {input.size(1)} expected {input_size}")
    for i, h in enumerate(hiddens):
        if input.size(0) != h.size(0):
            raise RuntimeError(
                f"Input batch size {input.size(0)} doesn't match hidden{i} batch size {h.size(0)}")
        if h.size(1) != hidden_size:
            raise RuntimeError(
                f"hidden{i} has inconsistent hidden_size: got {h.size(1)}, expected {hidden_size}")


def _plain_cell_args(input, hx, n_states, dtype, input_size, hidden_size):
    """A batched input with its full state, of one dtype and the right shapes: the common call,
    which needs none of the checks and conversions below (host time per step)."""
    if not isinstance(input, torch.Tensor) or input.dtype != dtype or input.dim() != 2:
        return False
    B, I = input.shape
    if n_states == 1:
        states = (hx,)
    elif isinstance(hx, tuple) and len(hx) == 2:
        states = hx
    else:
        return False
    for s in states:
        if not isinstance(s, torch.Tensor) or s.dtype != dtype or s.shape != (B, hidden_size):
            return False
    return I == input_size


class _Cell(_Backend):
    def forward(self, input, hx=None):
        if onnx_export.exporting():  # torch.onnx.export: torch's forward, as torch.nn's exports
            return super().forward(input, hx)
        w_ih, w_hh, b_ih, b_hh = self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh
        if _plain_cell_args(input, hx, self._n_states, w_ih.dtype, self.input_size,
                            self.hidden_size):
            be = resolve(self.backend, input)
            if be == "native":
                return super().forward(input, hx)
            return functional.cell_on(be, self._cell, input, hx, (w_ih, w_hh, b_ih, b_hh, None))
        if _fx_tracing(input, hx):
            return self._fx_leaf_call(input, hx)
        be = resolve(self.backend, input)
        if be == "native" or self._torch_decides(input, hx):
            return super().forward(input, hx)
        input, hx, is_batched = self._prepare(input, hx, self._n_states)
        out = functional.cell_on(be, self._cell, input, hx, (w_ih, w_hh, b_ih, b_hh, None))
        if is_batched:
            return out
        return (out[0].squeeze(0), out[1].squeeze(0)) if self._n_states == 2 else out.squeeze(0)

    def _torch_decides(self, input, hx):
        # Mixed dtypes: whatever torch does (its error, worded per device, or autocast's cast).
        return input.dtype != self.weight_ih.dtype or _mixed_dtypes(input, hx)

    def _prepare(self, input, hx, n_states):
        if input.dim() not in (1, 2):
            raise ValueError(f"{self._torch_name()}: Expected input to be 1D or 2D, "
                             f"got {input.dim()}D instead")
        if n_states == 2 and hx is not None:
            for i, v in enumerate(hx):
                if v.dim() not in (1, 2):
                    raise ValueError(f"{self._torch_name()}: Expected hx[{i}] to be 1D or 2D, "
                                     f"got {v.dim()}D instead")
        elif hx is not None and hx.dim() not in (1, 2):
            raise ValueError(f"{self._torch_name()}: Expected hidden to be 1D or 2D, "
                             f"got {hx.dim()}D instead")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            z = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)
            hx = (z, z) if n_states == 2 else z
        elif not is_batched:
            hx = (hx[0].unsqueeze(0), hx[1].unsqueeze(0)) if n_states == 2 else hx.unsqueeze(0)
        if n_states == 2 and len(hx) != 2:  # ATen checks the count first (unbatched: torch
            raise RuntimeError("lstm_cell expects two hidden states")  # kept the first two)
        hiddens = hx if n_states == 2 else (hx,)
        _check_cell_args(input, hiddens, self.input_size, self.hidden_size)
        return input, hx, is_batched


class LSTMCell(_Cell, nn.LSTMCell):
    __doc__ = _cell_doc("LSTMCell", "LSTM")
    __signature__ = _ClassSignature(lambda: _signature(nn.LSTMCell.__init__, drop=("self",)))
    _cell = cells.LSTM
    _n_states = 1 + _cell.has_cell


class GRUCell(_Cell, nn.GRUCell):
    __doc__ = _cell_doc("GRUCell", "GRU")
    __signature__ = _ClassSignature(lambda: _signature(nn.GRUCell.__init__, drop=("self",)))
    _cell = cells.GRU
    _n_states = 1 + _cell.has_cell


class RNNCell(_Cell, nn.RNNCell):
    __doc__ = _cell_doc("RNNCell", "RNN")
    __signature__ = _ClassSignature(lambda: _signature(nn.RNNCell.__init__, drop=("self",)))
    _n_states = 1

    @property
    def _cell(self):
        return cells.RNN_TANH if self.nonlinearity == "tanh" else cells.RNN_RELU


# The one torch -> fastcells class map: convert(), the tests, the benchmarks and the demo read it.
TWINS = {nn.LSTM: LSTM, nn.GRU: GRU, nn.RNN: RNN,
         nn.LSTMCell: LSTMCell, nn.GRUCell: GRUCell, nn.RNNCell: RNNCell}
# torch's (layer, cell) classes by family name.
TORCH_CLASSES = {"lstm": (nn.LSTM, nn.LSTMCell), "gru": (nn.GRU, nn.GRUCell),
                 "rnn": (nn.RNN, nn.RNNCell)}

_dynamo_support.install((LSTM, GRU, RNN))
