"""Timers: device time (``triton.testing.do_bench`` on CUDA, a wall-clock loop on CPU), host
time per call, peak memory.  Every timer returns (median, p20, p80) in milliseconds."""
import time

import numpy as np
import torch

QUANTILES = (0.5, 0.2, 0.8)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _quantiles(samples_ms):
    med, p20, p80 = np.quantile(np.asarray(samples_ms, dtype=np.float64), QUANTILES)
    return float(med), float(p20), float(p80)


def first_call_ms(fn, device):
    """Wall time of one call, synchronised: on a fresh workload it includes compilation (Triton
    kernels, torch.compile graphs), which the timed calls after it do not."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return (time.perf_counter() - t0) * 1e3


def wall_time(fn, rep_ms, *, warmup=1, min_reps=3, max_reps=10_000, sync=None):
    """Time each call with ``time.perf_counter`` for about ``rep_ms`` (at least ``min_reps``
    calls) after ``warmup`` untimed calls.  ``sync`` (untimed) runs before each call."""
    for _ in range(warmup):
        fn()
    samples = []
    deadline = time.perf_counter() + rep_ms / 1e3
    while len(samples) < min_reps or (len(samples) < max_reps and time.perf_counter() < deadline):
        if sync is not None:
            sync()
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return _quantiles(samples)


def device_time(fn, device, *, rep_ms=100, warmup_ms=25, min_reps=3):
    """Device time per call: ``do_bench`` (CUDA events, L2 flushed between calls) on CUDA; the
    wall-clock loop on CPU, where the call's wall time is its compute time."""
    if device.type == "cuda":
        from triton.testing import do_bench
        med, p20, p80 = do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=list(QUANTILES))
        return float(med), float(p20), float(p80)
    return wall_time(fn, rep_ms, warmup=1, min_reps=min_reps)


def host_time(fn, device, *, rep_ms=300, max_reps=50, min_reps=3):
    """Host (CPU) time per call: the wall time of the Python call without synchronising after
    it, so device work it merely queues is not counted.  The device is drained (untimed) before
    each call, so a full launch queue never blocks the call being timed."""
    return wall_time(fn, rep_ms, warmup=1, min_reps=min_reps, max_reps=max_reps,
                     sync=lambda: synchronize(device))


def peak_memory_mb(fn, device):
    """MiB that torch's CUDA allocator holds at the peak of one call beyond what was allocated
    before it (inputs, weights, a retained graph), plus what fastcells' CUDA-graph cache keeps
    between calls (its static buffers serve the call, though allocated by an earlier one); None
    on CPU, where torch keeps no such count."""
    if device.type != "cuda":
        return None
    from fastcells.kernels import cuda_graph
    synchronize(device)
    base = torch.cuda.memory_allocated(device) - cuda_graph.cached_bytes(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20
