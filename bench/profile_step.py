"""Where a fastcells call spends its time on a GPU: device time per kernel (torch.profiler)
and the wall time of one call, host overhead included (GPU only).

python bench/profile_step.py [--out FILE.txt]
"""
import argparse
import io
import time

import torch
from torch.profiler import ProfilerActivity, profile

import fastcells


def wall_ms(fn, reps=50):
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps * 1e3


def host_ms(fn, reps=50):
    """Python time to enqueue one call (no synchronisation inside the loop)."""
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / reps * 1e3


def cell_cases():
    """One cell step: LSTMCell and GRUCell at B=64 H=512, LSTMCell at B=1024
    H=256 (an RL rollout step), forward and forward+backward, fp32 and bf16."""
    for dtype in (torch.float32, torch.bfloat16):
        for cls, B, H in ((fastcells.LSTMCell, 64, 512), (fastcells.GRUCell, 64, 512),
                          (fastcells.LSTMCell, 1024, 256)):
            cell = cls(H, H, backend="triton").cuda().to(dtype)
            x = torch.randn(B, H, device="cuda", dtype=dtype, requires_grad=True)
            h = torch.randn(B, H, device="cuda", dtype=dtype)
            hx = (h, h) if cls is fastcells.LSTMCell else h
            name = f"{cls.__name__} B{B} H{H} {str(dtype)[6:]}"
            yield f"{name} fwd", lambda c=cell, x=x, hx=hx: c(x, hx)

            def fwd_bwd(c=cell, x=x, hx=hx):
                out = c(x, hx)
                (out[0] if isinstance(out, tuple) else out).sum().backward()
            yield f"{name} fwd+bwd", fwd_bwd


def host_profile(fn, calls=200, rows=28):
    """cProfile of ``calls`` calls: where the host time of a call goes (by own time)."""
    import cProfile
    import pstats
    fn()
    torch.cuda.synchronize()
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(calls):
        fn()
    pr.disable()
    torch.cuda.synchronize()
    out = io.StringIO()
    pstats.Stats(pr, stream=out).sort_stats("tottime").print_stats(rows)
    return out.getvalue()


def cases():
    for dtype in (torch.float32, torch.bfloat16):
        cell = fastcells.LSTMCell(512, 512, backend="triton").cuda().to(dtype)
        x = torch.randn(64, 512, device="cuda", dtype=dtype)
        hc = (torch.randn(64, 512, device="cuda", dtype=dtype),) * 2
        yield f"LSTMCell B64 H512 {dtype} fwd", lambda c=cell, x=x, hc=hc: c(x, hc)
        lstm = fastcells.LSTM(512, 512, backend="triton").cuda().to(dtype)
        xs = torch.randn(100, 64, 512, device="cuda", dtype=dtype)
        yield f"LSTM T100 B64 H512 {dtype} fwd", lambda m=lstm, xs=xs: m(xs)
        xg = xs.clone().requires_grad_()
        dy = torch.randn_like(xs)

        def fwd_bwd(m=lstm, xg=xg, dy=dy):
            y, _ = m(xg)
            y.backward(dy)
        yield f"LSTM T100 B64 H512 {dtype} fwd+bwd", fwd_bwd


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--cells", action="store_true",
                    help="one-step cells instead of layers, and a cProfile of the host path")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("profile_step: needs a CUDA GPU")
        return
    report = io.StringIO()
    summary = []
    for name, fn in (cell_cases() if args.cells else cases()):
        w, h = wall_ms(fn), host_ms(fn)
        if args.cells and "LSTMCell B64" in name:
            report.write(f"\n=== {name}: host profile (cProfile, 200 calls)\n{host_profile(fn)}")
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                fn()
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=12)
        report.write(f"\n=== {name}: wall {w:.3f} ms/call, host enqueue {h:.3f} ms/call\n{table}\n")
        if args.cells:   # host time by op and autograd node, every thread (cProfile sees only
            # this one; a CUDA backward runs on autograd's device thread)
            cpu = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=16)
            report.write(f"\n=== {name}: host time by event, all threads\n{cpu}\n")
        summary.append(f"{name:40s} wall {w:8.3f} ms   host {h:8.3f} ms")
    text = report.getvalue()
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(text[-6000:])
    print("\n".join(summary))


if __name__ == "__main__":
    main()
