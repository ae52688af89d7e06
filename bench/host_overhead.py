"""Host time per call: fastcells' own host path against torch.nn's whole call.

A single cell step or a short layer is host-bound on a GPU: what the call costs in Python,
dispatch and autograd is its speed.  This measures it for ``LSTMCell``/``GRUCell`` forward and
forward+backward, a one-layer LSTM (T=16) forward+backward, and an ``LSTMCell`` step under
``torch.no_grad()`` (inference: rollouts, decoding).

* **CPU** (no GPU; what CI can watch): the Triton launches are made no-ops under the interpreter,
  so the figure is fastcells' Python and dispatch path alone.  The bar is torch.nn's whole CPU call
  on the same tensors (its CPU kernels included, at tiny sizes where they cost little).
* **CUDA**: host enqueue time (the call's wall time, not synchronised) and device time (CUDA
  events) side by side, for both.

Run: ``python bench/host_overhead.py`` (``--json PATH`` writes the rows), or
``python bench/run.py --host``.  Figures are microseconds per call: the median of ``--repeats``
batches of ``--number`` calls each (CPU: the minimum is printed too, the least disturbed run).
On CPU the ratio is the median, over the batches, of a fastcells batch's time over the torch.nn
batch timed right after it: a shared machine's drift (a third, here) then cancels.  Both run
on one intra-op thread (the host path is one thread; a second only adds wake-ups at these sizes).
"""
import argparse
import contextlib
import json
import os
import statistics
import sys
import time

import torch

torch_empty = torch.empty  # the real one (tests poison torch.empty with NaN)
CASES = ("lstm_cell fwd", "lstm_cell fwd+bwd", "gru_cell fwd", "gru_cell fwd+bwd",
         "lstm T=16 fwd+bwd", "lstm_cell no_grad")
TINY = dict(B=4, I=8, H=8, T=16)  # CPU: so that torch's own kernels cost little


@contextlib.contextmanager
def stubbed_launches():
    """Every Triton kernel launch under the interpreter returns at once (outputs stay as
    allocated): what remains of a call is fastcells' host path."""
    from triton.runtime.interpreter import InterpretedFunction
    original = InterpretedFunction.run
    InterpretedFunction.run = lambda self, *a, **k: None
    try:
        yield
    finally:
        InterpretedFunction.run = original


def _modules(case, backend, device, dtype, shape):
    import fastcells
    from torch import nn
    B, I, H, T = shape["B"], shape["I"], shape["H"], shape["T"]
    kind, passes = case.split(" ", 1) if "T=" not in case else ("lstm", case.split(" ")[-1])
    torch.manual_seed(0)
    cls = {"lstm_cell": (nn.LSTMCell, fastcells.LSTMCell), "gru_cell": (nn.GRUCell, fastcells.GRUCell),
           "lstm": (nn.LSTM, fastcells.LSTM)}[kind]
    mod = (cls[0](I, H) if backend == "torch" else cls[1](I, H, backend=backend))
    mod = mod.to(device=device, dtype=dtype)
    x = torch.randn(T, B, I, device=device, dtype=dtype) if kind == "lstm" else torch.randn(
        B, I, device=device, dtype=dtype)
    if kind == "lstm_cell":
        state = (torch.randn(B, H, device=device, dtype=dtype),
                 torch.randn(B, H, device=device, dtype=dtype))
    elif kind == "gru_cell":
        state = torch.randn(B, H, device=device, dtype=dtype)
    else:
        state = None
    backward = passes == "fwd+bwd"
    if backward:
        x.requires_grad_()
    if passes == "no_grad":  # inference: a rollout or a decoding step
        def call():
            with torch.no_grad():
                mod(x, state)
        return call

    def call():
        out = mod(x, state)
        if backward:
            first = out[0] if isinstance(out, tuple) else out
            first.sum().backward()
    return call


def _time_pair(fast, ref, number, repeats):
    """((median, min) us per call of ``fast`` under stubbed launches, (median, min) of ``ref``,
    the median of the paired ratios): the two alternate in short batches of ``number`` calls, so
    that a shared machine's drift hits both alike, and each fast batch is compared with the ref
    batch beside it."""
    with stubbed_launches():
        for _ in range(3):
            fast()
    for _ in range(3):
        ref()
    per = ([], [])
    for _ in range(repeats):
        for i, call in enumerate((fast, ref)):
            with stubbed_launches() if i == 0 else contextlib.nullcontext():
                t0 = time.perf_counter()
                for _ in range(number):
                    call()
                per[i].append((time.perf_counter() - t0) / number * 1e6)
    paired = statistics.median(f / r for f, r in zip(*per))
    return [(statistics.median(p), min(p)) for p in per] + [paired]


def _time_cuda(call, number, repeats):
    """(host enqueue us, device us) per call on CUDA."""
    for _ in range(3):
        call()
    torch.cuda.synchronize()
    host, dev = [], []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        start.record()
        for _ in range(number):
            call()
        end.record()
        host.append((time.perf_counter() - t0) / number * 1e6)
        end.synchronize()
        dev.append(start.elapsed_time(end) / number * 1e3)
    return statistics.median(host), statistics.median(dev)


def measure(device=None, number=None, repeats=None, cases=CASES, dtype=torch.float32):
    """Rows {case, device, fastcells_us, torch_us, ratio, ...} (see the module docstring)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rows = []
    if device.type == "cpu":
        number, repeats = number or 10, repeats or 101
        # Stubbed kernels leave their outputs as allocated; denormal garbage would make the
        # GEMMs after them crawl on the CPU and time that instead of the host path.
        torch.set_flush_denormal(True)
        os.environ.setdefault("TRITON_INTERPRET", "1")
        from fastcells.backend import interpreter_enabled
        if not interpreter_enabled():
            raise RuntimeError("set TRITON_INTERPRET=1 before importing triton to measure on CPU")
        # One intra-op thread: at these sizes torch's ops gain nothing from a second one but
        # the wake-ups, which move the ratio by up to a tenth from run to run on a machine with
        # few cores.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for case in cases:
                fast = _modules(case, "triton", device, dtype, TINY)
                ref = _modules(case, "torch", device, dtype, TINY)
                (f_med, f_min), (t_med, t_min), paired = _time_pair(fast, ref, number, repeats)
                rows.append(dict(case=case, device="cpu", shape=TINY, threads=1,
                                 what="host path, launches stubbed", fastcells_us=f_med,
                                 fastcells_min_us=f_min, torch_us=t_med, torch_min_us=t_min,
                                 ratio=paired))
        finally:
            torch.set_num_threads(threads)
        return rows
    number, repeats = number or 200, repeats or 7
    shape = dict(B=64, I=512, H=512, T=16)
    runs = [(case, shape, dtype, number) for case in cases]
    # A layer whose host work per call can exceed its device work: bf16 at the fastrnns shape;
    # fewer calls per batch, so that the launch queue never fills and blocks the enqueue being timed.
    runs.append(("lstm T=100 fwd+bwd", dict(B=64, I=512, H=512, T=100), torch.bfloat16,
                 max(1, number // 10)))
    for case, shp, dt, n in runs:
        fast = _modules(case, "triton", device, dt, shp)
        ref = _modules(case, "torch", device, dt, shp)
        f_host, f_dev = _time_cuda(fast, n, repeats)
        t_host, t_dev = _time_cuda(ref, n, repeats)
        rows.append(dict(case=case, device=torch.cuda.get_device_name(device), shape=shp,
                         dtype=str(dt).replace("torch.", ""),
                         what="host enqueue and device time", fastcells_us=f_host,
                         fastcells_device_us=f_dev, torch_us=t_host, torch_device_us=t_dev,
                         ratio=f_host / t_host))
    return rows


def render(rows):
    lines = []
    if rows and rows[0]["device"] == "cpu":
        lines.append(f"CPU, {rows[0]['what']}, shape {rows[0]['shape']}, us per call "
                     "(median / min of the repeats)")
        lines.append(f"{'case':<20} {'fastcells':>17} {'torch.nn':>17} {'ratio':>8}")
        for r in rows:
            lines.append(f"{r['case']:<20} {r['fastcells_us']:8.1f} / {r['fastcells_min_us']:6.1f} "
                         f"{r['torch_us']:8.1f} / {r['torch_min_us']:6.1f} {r['ratio']:7.2f}x")
    else:
        lines.append(f"{rows[0]['device']}, us per call (median); nn = torch.nn (cuDNN, ATen cells)")
        lines.append(f"{'case':<20} {'dtype':<8} {'B,I,H':<12} {'fc host':>9} {'fc device':>10} "
                     f"{'nn host':>9} {'nn device':>10}")
        for r in rows:
            s = r["shape"]
            lines.append(f"{r['case']:<20} {r['dtype']:<8} {s['B']},{s['I']},{s['H']:<6} "
                         f"{r['fastcells_us']:9.1f} {r['fastcells_device_us']:10.1f} "
                         f"{r['torch_us']:9.1f} {r['torch_device_us']:10.1f}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python bench/host_overhead.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None)
    p.add_argument("--number", type=int, default=None,
                   help="calls per timed batch (CPU 10, CUDA 200)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed batches, the median reported (CPU 101, CUDA 7)")
    p.add_argument("--json", default=None, help="write the rows here")
    args = p.parse_args(argv)
    rows = measure(args.device, args.number, args.repeats)
    print(render(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
