"""torch.onnx.export of fastcells' modules, both exporters (dynamo=False: TorchScript; dynamo=True:
torch.export), on every way a user picks the backend: the exported graph is the one torch.nn's twin
exports (standard ONNX LSTM/GRU/RNN nodes where torch.nn's has them), onnxruntime runs it to the
float64 torch.nn result, and where torch.nn's export raises, fastcells' raises the same."""
import copy
import io
import warnings

import pytest
import torch
from torch import nn

import fastcells
from fastcells import onnx_export
from rnn_utils import CELLS, KINDS, flat, twins
from tolerances import TOL, assert_close, fp32_overrides

onnx = pytest.importorskip("onnx", reason="ONNX export tests need onnx (the test extra)")
ort = pytest.importorskip("onnxruntime",
                          reason="ONNX export tests need onnxruntime (the test extra)")

from user_routes import route  # noqa: E402,F401  (the fixture: every user route)


def export(model, args, dynamo):
    """The ModelProto torch.onnx.export makes of ``model`` (in eval mode)."""
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation, trace warnings
        if dynamo:
            return torch.onnx.export(model, args, dynamo=True, verbose=False).model_proto
        f = io.BytesIO()
        torch.onnx.export(model, args, f, dynamo=False)
        return onnx.load_from_string(f.getvalue())


def run_onnx(proto, args):
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {i.name: a.detach().cpu().numpy() for i, a in zip(sess.get_inputs(), args)}
    return [torch.from_numpy(o) for o in sess.run(None, feeds)]


def ops(proto):
    return [n.op_type for n in proto.graph.node]


_TORCH_OPS = {}


def torch_ops(key, ref, args, dynamo):
    """The nodes of torch.nn's export of ``ref``, once per case (the same on every route)."""
    if key not in _TORCH_OPS:
        _TORCH_OPS[key] = ops(export(ref, args, dynamo))
    return _TORCH_OPS[key]


def check_export(ref, fast, args, dynamo, device, key=None):
    """fastcells' export is torch.nn's: the same graph nodes; onnxruntime's outputs and eager
    fastcells' match the float64 torch.nn result.  ``key`` names the case, to export
    torch.nn's twin once per case."""
    oracle = copy.deepcopy(ref).double().eval()
    expected = flat(oracle(*(a.double() for a in args)))
    fast.eval()
    with torch.no_grad():
        eager = flat(fast(*args))
    proto = export(fast, args, dynamo)
    want = (ops(export(ref, args, dynamo)) if key is None
            else torch_ops((key, dynamo, str(device)), ref, args, dynamo))
    assert ops(proto) == want
    got = run_onnx(proto, args)
    assert len(got) == len(expected)
    for g, e, y in zip(got, expected, eager):
        assert_close(g, e.cpu(), dtype=torch.float32)  # onnxruntime: full fp32 on the CPU
        assert_close(y, e, dtype=torch.float32, **fp32_overrides(torch.float32, device))
    return proto


# (table, mode, constructor keywords, input shape) on I=3, H=5; the ONNX node torch.nn's has
LAYERS = {
    "lstm": (KINDS, "lstm", {}, (4, 2, 3), "LSTM"),
    "gru": (KINDS, "gru", {}, (4, 2, 3), "GRU"),
    "rnn_tanh": (KINDS, "rnn_tanh", {}, (4, 2, 3), "RNN"),
    "rnn_relu": (KINDS, "rnn_relu", {}, (4, 2, 3), "RNN"),
    "lstm-L2-bi": (KINDS, "lstm", dict(num_layers=2, bidirectional=True), (4, 2, 3), "LSTM"),
    "gru-batch_first": (KINDS, "gru", dict(batch_first=True), (3, 4, 3), "GRU"),
    "lstm-unbatched": (KINDS, "lstm", {}, (4, 3), "LSTM"),
    "lstm_cell": (CELLS, "lstm", {}, (2, 3), None),
    "gru_cell": (CELLS, "gru", {}, (3, 3), None),
    "rnn_tanh_cell": (CELLS, "rnn_tanh", {}, (2, 3), None),
}


@pytest.mark.parametrize("case", list(LAYERS))
def test_torchscript_export(case, route, device):
    table, mode, kw, shape, node = LAYERS[case]
    ref, fast = twins(table, mode, 3, 5, backend=route, dtype=torch.float32, device=device, **kw)
    x = torch.randn(*shape, device=device)
    proto = check_export(ref, fast, (x,), dynamo=False, device=device, key=case)
    if node:  # the standard ONNX operator, one per layer (both directions in one node)
        assert ops(proto).count(node) == kw.get("num_layers", 1)


def test_torchscript_export_with_states(route, device):
    """hx given as graph inputs: h0 and c0 become ONNX inputs, the final states outputs."""
    ref, fast = twins(KINDS, "lstm", 3, 5, backend=route, dtype=torch.float32, device=device,
                      num_layers=2)

    class WithStates(nn.Module):
        def __init__(self, rnn):
            super().__init__()
            self.rnn = rnn

        def forward(self, x, h, c):
            return self.rnn(x, (h, c))

    args = (torch.randn(3, 2, 3, device=device), torch.randn(2, 2, 5, device=device),
            torch.randn(2, 2, 5, device=device))
    check_export(WithStates(ref), WithStates(fast), args, dynamo=False, device=device)


def test_converted_model_exports(route, device):
    """A model passed through fastcells.convert exports as the torch.nn model it came from."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.GRU(4, 5)).to(device)
    ref = copy.deepcopy(model)
    fast = fastcells.convert(model, backend=route)
    assert isinstance(fast[1], fastcells.GRU)
    check_export(ref, fast, (torch.randn(4, 2, 3, device=device),), dynamo=False, device=device)


class _Functional(nn.Module):
    """fastcells.functional called from a user's module."""

    def __init__(self, backend):
        super().__init__()
        self.backend = backend
        self.rnn = nn.LSTM(3, 5)

    def forward(self, x):
        return fastcells.functional.rnn("lstm", x, (x.new_zeros(1, x.shape[1], 5),) * 2,
                                        self.rnn._flat_weights, backend=self.backend)


def test_functional_exports(route, device):
    torch.manual_seed(0)
    fast = _Functional(route).to(device)
    x = torch.randn(4, 2, 3, device=device)
    proto = export(fast, (x,), dynamo=False)
    assert ops(proto).count("LSTM") == 1
    with torch.no_grad():
        expected = flat(fast.rnn(x))
    for g, e in zip(run_onnx(proto, (x,)), expected):
        torch.testing.assert_close(g, e.cpu(), **TOL[torch.float32])


def test_torchscript_export_raises_as_torch(route, device):
    """torch's TorchScript exporter has no LSTM with projections: the same error as torch.nn's."""
    ref, fast = twins(KINDS, "lstm", 3, 5, backend=route, dtype=torch.float32, device=device,
                      proj_size=2)
    x = torch.randn(4, 2, 3, device=device)
    with pytest.raises(Exception) as e_ref:
        export(ref, (x,), dynamo=False)
    with pytest.raises(Exception) as e_fast:
        export(fast, (x,), dynamo=False)
    assert type(e_fast.value) is type(e_ref.value)
    assert str(e_fast.value) == str(e_ref.value)


# The dynamo exporter takes about a second a model: one case per route, each a different model
# (the route is decided as for the TorchScript exporter, which runs every case on every route).
DYNAMO = {
    "default": (KINDS, "lstm", {}, (3, 2, 3), "LSTM"),
    "env-triton": (KINDS, "lstm", dict(num_layers=2, bidirectional=True), (3, 2, 3), "LSTM"),
    "use_backend-reference": (KINDS, "gru", dict(batch_first=True), (2, 3, 3), "GRU"),
    "kw-triton": (KINDS, "rnn_tanh", {}, (3, 2, 3), None),   # torch.nn's: unrolled MatMul/Tanh
    "kw-reference": (CELLS, "lstm", {}, (2, 3), None),
}


@pytest.fixture
def onnxscript():
    return pytest.importorskip("onnxscript",
                               reason="torch.onnx.export(dynamo=True) needs onnxscript")


@pytest.mark.parametrize("route", list(DYNAMO), indirect=True)
def test_dynamo_export(route, request, onnxscript, device):
    table, mode, kw, shape, node = DYNAMO[request.node.callspec.params["route"]]
    ref, fast = twins(table, mode, 3, 5, backend=route, dtype=torch.float32, device=device, **kw)
    proto = check_export(ref, fast, (torch.randn(*shape, device=device),), dynamo=True,
                         device=device)
    if node:
        assert node in ops(proto)


def test_dynamo_export_projections_as_torch(monkeypatch, onnxscript, device):
    """torch 2.13's dynamo exporter exports an LSTM with projections to a model onnxruntime
    rejects (initial_c given the projected size): fastcells' export is the same model."""
    monkeypatch.setenv("FASTCELLS_BACKEND", "triton")
    ref, fast = twins(KINDS, "lstm", 3, 5, backend=None, dtype=torch.float32, device=device,
                      proj_size=2)
    x = torch.randn(3, 2, 3, device=device)
    ref_proto, fast_proto = export(ref, (x,), True), export(fast, (x,), True)
    assert ops(fast_proto) == ops(ref_proto)
    outcomes = []
    for proto in (ref_proto, fast_proto):
        try:
            outcomes.append(("ran", [o.shape for o in run_onnx(proto, (x,))]))
        except Exception as e:  # noqa: BLE001  (whatever onnxruntime says, it says it twice)
            outcomes.append((type(e), str(e)))
    assert outcomes[1] == outcomes[0]


_SEEN = []


class _Probe(nn.Module):
    """Records what fastcells sees, and what torch says, inside an export (in a global list:
    torch.export restores a module's attributes after tracing)."""

    def forward(self, x):
        _SEEN.append((onnx_export.exporting(), torch.onnx.is_in_onnx_export()))
        return x + 1


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_exporting_flag(dynamo):
    if dynamo:
        pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript")
    _SEEN.clear()
    export(_Probe(), (torch.randn(3),), dynamo)
    assert _SEEN and all(s == (True, True) for s in _SEEN), _SEEN
    assert not onnx_export.exporting() and not torch.onnx.is_in_onnx_export()


def test_exporting_traces_without_graph_break():
    """The check sits in every forward: torch.compile(fullgraph=True) must trace it."""
    import torch.onnx  # noqa: F401  (the flags are read once torch.onnx is loaded)

    def f(x):
        return x + 1 if onnx_export.exporting() else x * 2

    x = torch.randn(3)
    torch.testing.assert_close(torch.compile(f, fullgraph=True, backend="eager")(x), x * 2)
