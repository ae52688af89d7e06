"""ONNX export: while ``torch.onnx.export`` runs, fastcells' modules and functional ops take
torch's own forward (the 'native' route), whatever their backend.

The fused kernels are custom ops that neither exporter can translate, and the reference math
would export as an unrolled graph of MatMuls; torch's forward exports to the standard ONNX
``LSTM``/``GRU``/``RNN`` operators where torch.nn's does (both exporters), and raises where
torch.nn's raises.  So an exported fastcells model is the model torch.nn's twin exports, on
every backend and device.

Both exporters are seen: the TorchScript one (``dynamo=False``) sets
``torch.onnx._internal.torchscript_exporter._globals.GLOBALS._in_onnx_export``, the dynamo one
(``dynamo=True``, which runs ``torch.export``) sets
``torch.onnx._internal.exporter._flags._is_onnx_exporting``; ``torch.onnx.is_in_onnx_export()``
reads both.  That public function costs about 1.6 us a call (it imports both modules), so
:func:`exporting` reads the two flags where they are loaded (the public function otherwise,
e.g. on a torch whose internals moved), and only once ``torch.onnx`` has been imported at all:
fastcells does not import it (about 30 ms).
"""
import sys

_TORCH_ONNX = "torch.onnx"
_FLAGS = "torch.onnx._internal.exporter._flags"                  # dynamo=True
_GLOBALS = "torch.onnx._internal.torchscript_exporter._globals"  # dynamo=False


def exporting():
    """Whether ``torch.onnx.export`` (either exporter) is running.  Imports nothing (an export
    has imported the module holding its flag), so torch.compile traces it without a graph
    break: a constant, guarded."""
    modules = sys.modules
    if _TORCH_ONNX not in modules:
        return False
    try:  # plain attributes: Dynamo does not trace into torch.onnx (GLOBALS.in_onnx_export)
        return modules[_GLOBALS].GLOBALS._in_onnx_export or modules[_FLAGS]._is_onnx_exporting
    except (KeyError, AttributeError):  # no dynamo export yet, or another torch's layout
        return modules[_TORCH_ONNX].is_in_onnx_export()
