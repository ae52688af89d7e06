"""The measured cost of one dependent step on a GPU: the sequential bound of a recurrence.

A recurrence of T steps cannot end sooner than T times the cheapest dependent step the hardware
allows, whatever its FLOPs and bytes.  Two dependent steps are timed, both empty of arithmetic:

* ``loop_s``: an empty resident loop: one program (4 warps) that, at every step, stores a value,
  passes a barrier and loads it back (a volatile load: the compiler may not forward the store), so
  step t+1 depends on step t through memory, as in the resident kernel.  Timed at n and 2n steps
  in one launch; the difference over n cancels the launch.  This is the bound the floor uses:
  no design fastcells has can take a dependent step for less.
* ``launch_s``: a chain of n one-element dependent launches replayed from one CUDA graph, over n:
  what a step of today's per-step chain pays before any work.  Recorded for comparison.

On CPU nothing is measured (``measure`` returns None): the interpreter's timings mean nothing.
"""
import torch
import triton
import triton.language as tl

from .timing import device_time


@triton.jit(do_not_specialize=["n"])
def _dependent_loop_kernel(buf_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    x = tl.load(buf_ptr + offs)
    for _ in range(n):
        tl.store(buf_ptr + BLOCK + offs, x + 1.0)
        tl.debug_barrier()
        # Every thread reads what a neighbour wrote: a real round trip through memory.
        x = tl.load(buf_ptr + BLOCK + (offs + 1) % BLOCK, volatile=True)
        tl.debug_barrier()
    tl.store(buf_ptr + offs, x)


@triton.jit
def _dependent_step_kernel(buf_ptr):
    tl.store(buf_ptr, tl.load(buf_ptr) + 1.0)


def _loop_step_s(device, n, rep_ms):
    buf = torch.rand(2 * 128, device=device)

    def run(k):
        return lambda: _dependent_loop_kernel[(1,)](buf, k, BLOCK=128, num_warps=4)

    one, _, _ = device_time(run(n), device, rep_ms=rep_ms)
    two, _, _ = device_time(run(2 * n), device, rep_ms=rep_ms)
    return max(two - one, 0.0) * 1e-3 / n


def _launch_step_s(device, n, rep_ms):
    buf = torch.rand(1, device=device)
    _dependent_step_kernel[(1,)](buf)            # compile outside the capture
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(n):
            _dependent_step_kernel[(1,)](buf)
    ms, _, _ = device_time(graph.replay, device, rep_ms=rep_ms)
    return ms * 1e-3 / n


def measure(device, *, steps=1000, rep_ms=100):
    """{'loop_s': seconds, 'launch_s': seconds, 'steps': n} per dependent step on ``device``,
    or None off CUDA."""
    if device.type != "cuda":
        return None
    return dict(loop_s=_loop_step_s(device, steps, rep_ms),
                launch_s=_launch_step_s(device, steps, rep_ms), steps=steps)
