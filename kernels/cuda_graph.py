"""Replay a layer's fixed sequence of step launches as one CUDA graph.

A step kernel is a few microseconds of GPU work; launching it from Python costs about as much
again, T times per layer.  On CUDA the loop is captured once per shape into a graph over static
buffers and replayed: inputs are copied in, outputs come back as the static buffers themselves
(valid until the next replay of the same graph: callers clone what they keep).
``FASTCELLS_CUDA_GRAPHS=0`` (kernels.config) launches step by step instead.
"""
import collections
import threading

import torch

from . import config

MAX_GRAPHS = 16  # cached graphs (each holds its static buffers); least recently used evicted
_cache = collections.OrderedDict()
_cache_lock = threading.Lock()
_capturing = threading.Lock()   # one capture at a time (_Graphed._capture)


def enabled(device):
    return (device.type == "cuda" and config.cuda_graphs()
            and not torch.cuda.is_current_stream_capturing())


def _value(v, out=None):
    """An input: a tensor, or a producer ``f(out)`` that writes it into ``out`` (a static buffer)
    or, given None, returns it: a matmul then writes straight into the graph's buffer instead
    of into a temporary that is copied there."""
    return v(out) if callable(v) else (v if out is None else out.copy_(v))


_capture_streams = {}   # device index -> the one stream captures run on (under _capturing)


def _capture_stream(device):
    # One per device, made once, as torch's own default capture stream: a new pool stream per
    # capture would, in time, be every stream of torch's pool, some other thread's among them.
    stream = _capture_streams.get(device)
    if stream is None:
        stream = _capture_streams[device] = torch.cuda.Stream(device)
    return stream


class _Graphed:
    def __init__(self, inputs, outputs, steps):
        self.bufs = {k: torch.empty_like(_value(v)) for k, v in inputs.items()}
        self.bufs.update({k: torch.empty(shape, dtype=dtype, device=dev)
                          for k, (shape, dtype, dev) in outputs.items()})
        for v in self.bufs.values():
            if v.is_floating_point():
                v.zero_()  # the warm-up runs on these: keep it finite
        self._capture(steps)

    def _capture(self, steps):
        # One capture at a time, on the capture stream, in thread-local mode: two threads of an
        # inference server may both meet a new shape, and torch's default (global) mode would
        # fail the other thread's allocations while one captures.
        with _capturing:
            side = _capture_stream(torch.cuda.current_device())
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                steps(self.bufs)  # compiles the kernels outside the capture
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, stream=side, capture_error_mode="thread_local"):
                steps(self.bufs)

    def replay(self):
        self.graph.replay()


def cached_bytes(device=None):
    """Bytes of static buffers the cached graphs keep (on ``device``, or on every device)."""
    with _cache_lock:
        graphs = list(_cache.values())
    return sum(v.nbytes for g in graphs for v in g.bufs.values()
               if device is None or v.device == torch.device(device))


def clear():
    """Drop every cached graph and its static buffers (their memory returns to torch's cache)."""
    with _cache_lock:
        _cache.clear()


def run(key, device, inputs, outputs, steps):
    """Run ``steps(bufs)``, a fixed sequence of launches over the tensors in ``bufs``.

    ``inputs``: name -> tensor read by the steps, or a producer of it (see ``_value``);
    ``outputs``: name -> (shape, dtype, device) of the tensors the steps write.  Returns
    ``bufs`` (inputs and outputs by name)."""
    if key is None or not enabled(device):
        bufs = {k: _value(v) for k, v in inputs.items()}
        bufs.update({k: torch.empty(s, dtype=d, device=dev) for k, (s, d, dev) in outputs.items()})
        steps(bufs)
        return bufs
    with _cache_lock:   # threads share the cache (each with its own keys): no torn update
        g = _cache.get(key)
        if g is not None:
            _cache.move_to_end(key)
    if g is None:
        g = _Graphed(inputs, outputs, steps)
        with _cache_lock:
            _cache[key] = g
            if len(_cache) > MAX_GRAPHS:
                _cache.popitem(last=False)
    for k, v in inputs.items():
        _value(v, g.bufs[k])
    g.replay()
    return g.bufs
