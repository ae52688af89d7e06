"""torch.ao.quantization.quantize_dynamic of a model holding fastcells modules gives what it gives
the same model with torch.nn's modules: the same quantized module types, bit-identical outputs,
and the same errors; whatever torch leaves in float stays fastcells' (on its backend)."""
import copy
import importlib
import warnings

import pytest
import torch
from torch import nn
from torch.ao.nn.quantized import dynamic as nnqd
from torch.ao.quantization import quantize_dynamic
from torch.ao.quantization.qconfig import (default_dynamic_qconfig, float16_dynamic_qconfig,
                                           float_qparams_weight_only_qconfig)
from torch.nn.utils import parametrize

import fastcells
from tolerances import assert_close

pytestmark = pytest.mark.filterwarnings(
    "ignore:torch.ao.quantization is deprecated:DeprecationWarning",
    "ignore:torch.quantize_per_tensor:UserWarning")

from user_routes import route  # noqa: E402,F401  (the fixture: every user route)


class Net(nn.Module):
    """Linear, a 2-layer bidirectional LSTM, a batch_first GRU and the three cells, from ``lib``
    (torch.nn or fastcells); an RNN layer beside them (torch quantizes no RNN layer)."""

    def __init__(self, lib, **kw):
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.lstm = lib.LSTM(4, 5, num_layers=2, bidirectional=True, **kw)
        self.gru = lib.GRU(10, 5, batch_first=True, **kw)
        self.lstm_cell = lib.LSTMCell(5, 5, **kw)
        self.gru_cell = lib.GRUCell(5, 5, **kw)
        self.rnn_cell = lib.RNNCell(5, 5, **kw)
        self.rnn = lib.RNN(5, 5, **kw)

    def layers(self, x):
        y, _ = self.lstm(self.lin(x))
        y, h = self.gru(y.transpose(0, 1))
        return y[:, -1], h[0]

    def cells(self, y, h):
        h1, c1 = self.lstm_cell(y, (h, h))
        return self.rnn_cell(self.gru_cell(h1, c1), h1)

    def forward(self, x):
        return self.cells(*self.layers(x))


def nets(backend=None, seed=0):
    """(torch.nn Net, fastcells Net) with identical weights."""
    torch.manual_seed(seed)
    ref = Net(nn)
    fast = Net(fastcells, **({} if backend is None else {"backend": backend}))
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def types(model):
    return {name: type(m) for name, m in model.named_modules()}


X = torch.randn(4, 3, 3, generator=torch.Generator().manual_seed(1))

TORCH_CLASSES = {nn.Linear, nn.LSTM, nn.GRU, nn.LSTMCell, nn.GRUCell, nn.RNNCell}
FAST_CLASSES = {nn.Linear, fastcells.LSTM, fastcells.GRU, fastcells.LSTMCell, fastcells.GRUCell,
                fastcells.RNNCell}
NAMES = {"lin", "lstm", "gru", "lstm_cell", "gru_cell", "rnn_cell"}
MIXED = {nn.Linear: default_dynamic_qconfig, nn.LSTM: float16_dynamic_qconfig,
         nn.GRU: default_dynamic_qconfig, nn.LSTMCell: default_dynamic_qconfig,
         nn.GRUCell: float16_dynamic_qconfig, nn.RNNCell: default_dynamic_qconfig}
MAPPING = {nn.Linear: nnqd.Linear, nn.LSTM: nnqd.LSTM, nn.GRU: nnqd.GRU,
           nn.LSTMCell: nnqd.LSTMCell, nn.GRUCell: nnqd.GRUCell, nn.RNNCell: nnqd.RNNCell}
FAST_MAPPING = {nn.Linear: nnqd.Linear, fastcells.LSTM: nnqd.LSTM, fastcells.GRU: nnqd.GRU,
                fastcells.LSTMCell: nnqd.LSTMCell, fastcells.GRUCell: nnqd.GRUCell,
                fastcells.RNNCell: nnqd.RNNCell}

# id -> (keywords for the torch.nn model, keywords for the fastcells model): every recurrent
# module but the RNN layer quantized
SPECS = {
    "default-qint8": (dict(), dict()),
    "default-float16": (dict(dtype=torch.float16), dict(dtype=torch.float16)),
    "torch-classes": (dict(qconfig_spec=TORCH_CLASSES), dict(qconfig_spec=TORCH_CLASSES)),
    "torch-classes-float16": (dict(qconfig_spec=TORCH_CLASSES, dtype=torch.float16),
                              dict(qconfig_spec=TORCH_CLASSES, dtype=torch.float16)),
    "fastcells-classes": (dict(qconfig_spec=TORCH_CLASSES), dict(qconfig_spec=FAST_CLASSES)),
    "qconfig-dict": (dict(qconfig_spec=MIXED), dict(qconfig_spec=MIXED)),
    "names": (dict(qconfig_spec=NAMES), dict(qconfig_spec=NAMES)),
    "user-mapping": (dict(mapping=MAPPING), dict(mapping=MAPPING)),
    "user-mapping-fastcells": (dict(mapping=MAPPING), dict(mapping=FAST_MAPPING)),
}


def quantized_like_torch(ref, fast, ref_kw, fast_kw):
    q_ref, q_fast = quantize_dynamic(ref, **ref_kw), quantize_dynamic(fast, **fast_kw)
    assert types(q_fast) == {**types(q_ref), "rnn": type(fast.rnn)}
    with torch.no_grad():
        torch.testing.assert_close(q_fast(X), q_ref(X), rtol=0, atol=0)
    return q_ref, q_fast


@pytest.mark.parametrize("spec", list(SPECS))
def test_quantize_dynamic_as_torch(spec, route):
    ref, fast = nets(route)
    q_ref, q_fast = quantized_like_torch(ref, fast, *SPECS[spec])
    for name in NAMES - {"lin"}:
        assert type(getattr(q_fast, name)).__module__.startswith("torch.ao.nn.quantized.dynamic")
    assert isinstance(q_fast.rnn, fastcells.RNN) and q_fast.rnn.backend == route
    assert not hasattr(q_fast.rnn, "qconfig") and not hasattr(q_ref.rnn, "qconfig")
    assert isinstance(fast.lstm, fastcells.LSTM)   # not inplace: the float model is untouched


def test_issue_spec_leaves_cells_float(route):
    """{nn.LSTM, nn.GRU, nn.Linear}: the layers quantized as torch's, the cells and the RNN layer
    left fastcells' (torch leaves its own in float), running on their backend."""
    ref, fast = nets(route)
    spec = {nn.LSTM, nn.GRU, nn.Linear}
    q_ref, q_fast = quantize_dynamic(ref, spec), quantize_dynamic(fast, spec)
    assert [type(q_fast.lin), type(q_fast.lstm), type(q_fast.gru)] == \
        [nnqd.Linear, nnqd.LSTM, nnqd.GRU] == [type(q_ref.lin), type(q_ref.lstm), type(q_ref.gru)]
    for name in ("lstm_cell", "gru_cell", "rnn_cell", "rnn"):
        assert type(getattr(q_fast, name)) is type(getattr(fast, name)), name
        assert getattr(q_fast, name).backend == route
    with torch.no_grad():
        y, h = q_fast.layers(X)
        y_ref, h_ref = q_ref.layers(X)
        torch.testing.assert_close((y, h), (y_ref, h_ref), rtol=0, atol=0)
        oracle = copy.deepcopy(ref).double()   # the float cells in float64
        assert_close(q_fast.cells(y, h), oracle.cells(y.double(), h.double()),
                     dtype=torch.float32)
        x = torch.randn(3, 2, 5)
        assert_close(q_fast.rnn(x)[0], oracle.rnn(x.double())[0], dtype=torch.float32)


def test_converted_model(route):
    """fastcells.convert, then quantize_dynamic: as quantizing the torch.nn model."""
    ref, _ = nets()
    fast = fastcells.convert(copy.deepcopy(ref), backend=route)
    assert isinstance(fast.lstm, fastcells.LSTM)
    # spec -> the modules left in float (fastcells' in the converted model)
    cells_and_rnn = ("lstm_cell", "gru_cell", "rnn_cell", "rnn")
    for spec, left in ((None, ("rnn",)), ({nn.LSTM, nn.GRU, nn.Linear}, cells_and_rnn)):
        q_ref, q_fast = quantize_dynamic(ref, spec), quantize_dynamic(fast, spec)
        assert types(q_fast) == {**types(q_ref), **{n: type(getattr(fast, n)) for n in left}}
    with torch.no_grad():   # the layers: quantized under both specs
        torch.testing.assert_close(q_fast.layers(X), q_ref.layers(X), rtol=0, atol=0)


def test_inplace_and_hooks(route):
    """inplace=True swaps in the model itself; forward hooks move to the quantized module, as
    torch's do."""
    ref, fast = nets(route)
    seen = {"ref": [], "fast": []}
    ref.lstm.register_forward_hook(lambda m, i, o: seen["ref"].append(type(m)))
    fast.lstm.register_forward_hook(lambda m, i, o: seen["fast"].append(type(m)))
    q_ref = quantize_dynamic(ref, inplace=True)
    q_fast = quantize_dynamic(fast, inplace=True)
    assert q_fast is fast and q_ref is ref
    with torch.no_grad():
        torch.testing.assert_close(q_fast(X), q_ref(X), rtol=0, atol=0)
    assert seen["fast"] == seen["ref"] == [nnqd.LSTM]


def test_spec_classes_are_exact():
    """A spec naming fastcells' class quantizes fastcells' modules only; one naming torch's
    quantizes both (a fastcells module is configured as its torch twin)."""
    model = nn.Sequential(nn.LSTM(3, 5), fastcells.LSTM(5, 5))
    assert [type(m) for m in quantize_dynamic(model, {fastcells.LSTM})] == [nn.LSTM, nnqd.LSTM]
    assert [type(m) for m in quantize_dynamic(model, {nn.LSTM})] == [nnqd.LSTM, nnqd.LSTM]
    # the fastcells class's own entry wins over its twin's
    spec = {nn.LSTM: default_dynamic_qconfig, fastcells.LSTM: float16_dynamic_qconfig}
    q = quantize_dynamic(model, spec)
    assert q[0].dtype == torch.qint8 and q[1].dtype == torch.float16


class _Scale(nn.Module):
    def forward(self, w):
        return w * 1.0


def _parametrized(lib):
    m = lib.LSTM(3, 5)
    parametrize.register_parametrization(m, "weight_hh_l0", _Scale())
    return m


ERRORS = {
    "parametrized": (_parametrized, {nn.LSTM}),
    "no-bias": (lambda lib: lib.LSTM(3, 5, bias=False), {nn.LSTM}),
    "unsupported-dtype": (lambda lib: lib.GRUCell(3, 5), {nn.GRUCell:
                                                         float_qparams_weight_only_qconfig}),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_raises_as_torch(case, route):
    make, spec = ERRORS[case]
    kw = {} if route is None else {"backend": route}
    with pytest.raises(Exception) as e_ref:
        quantize_dynamic(nn.Sequential(make(nn)), spec)
    with pytest.raises(Exception) as e_fast:
        quantize_dynamic(nn.Sequential(make(_With(fastcells, kw))), spec)
    assert type(e_fast.value) is type(e_ref.value)
    assert str(e_fast.value) == str(e_ref.value)


class _With:
    """``lib`` with constructor keywords bound."""

    def __init__(self, lib, kw):
        self.lib, self.kw = lib, kw

    def __getattr__(self, name):
        cls = getattr(self.lib, name)
        return lambda *a, **k: cls(*a, **k, **self.kw)


def test_torch_modules_quantize_as_before(monkeypatch):
    """With the hook and without it (torch's own functions), torch.nn's model quantizes the same."""
    quantize = importlib.import_module("torch.ao.quantization.quantize")
    ref, _ = nets()
    hooked = quantize_dynamic(ref, {nn.LSTM, nn.GRU, nn.Linear})
    monkeypatch.setattr(quantize, "_propagate_qconfig_helper",
                        quantize._propagate_qconfig_helper.__wrapped__)
    monkeypatch.setattr(quantize, "swap_module", quantize.swap_module.__wrapped__)
    plain = quantize_dynamic(ref, {nn.LSTM, nn.GRU, nn.Linear})
    assert types(hooked) == types(plain)
    with torch.no_grad():
        torch.testing.assert_close(hooked(X), plain(X), rtol=0, atol=0)


def test_hook_installed_once():
    quantize = importlib.import_module("torch.ao.quantization.quantize")
    helper, swap = quantize._propagate_qconfig_helper, quantize.swap_module
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fastcells.quantization.install()
    assert quantize._propagate_qconfig_helper is helper and quantize.swap_module is swap
    assert not hasattr(helper.__wrapped__, "__wrapped__")
