"""Step-kernel tile sweep and CUDA-graph on/off at one layer shape, against cuDNN (GPU only).

python bench/tile_sweep.py [--out FILE.json]   (prints a table; default shape: fastrnns LSTM)
"""
import argparse
import json
import os
import time

import torch
import triton

import fastcells
from fastcells.kernels import recurrence

CONFIGS = [None, (16, 16, 32, 4), (16, 16, 64, 2), (16, 32, 64, 4), (32, 16, 64, 4),
           (64, 32, 32, 4)]


def bench_layer(mode_cls, T, B, H, dtype, backend, graphs, tiles):
    """{pass: (median, p20, p80) ms}: the module's forward and forward+backward, or, with
    ``tiles`` (BLOCK_B, BLOCK_H, BLOCK_K, num_warps), the kernels' launchers with those tiles
    (kernels.recurrence: the same launches the module makes, without its autograd node)."""
    os.environ["FASTCELLS_CUDA_GRAPHS"] = "1" if graphs else "0"
    torch.manual_seed(0)
    m = mode_cls(H, H, backend=backend).cuda().to(dtype)
    x = torch.randn(T, B, H, device="cuda", dtype=dtype, requires_grad=True)
    dy = torch.randn(T, B, H, device="cuda", dtype=dtype)
    if tiles is None:
        fwd = lambda: m(x)  # noqa: E731

        def fwd_bwd():
            y, _ = m(x)
            y.backward(dy)
    else:
        fwd, fwd_bwd = _launchers(m, x.detach(), dy, tiles)
    res = {}
    for name, fn in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
        res[name] = triton.testing.do_bench(fn, warmup=25, rep=100, quantiles=[0.5, 0.2, 0.8])
    return res


def _launchers(m, x, dy, tiles):
    """(fwd, fwd_bwd) of module ``m``'s one layer on the launchers, with ``tiles`` forced."""
    mode = m.mode.lower()
    w = [p.detach() for p in m._flat_weights]
    weights = (w[0], w[1], w[2], w[3], None)
    B, H = x.shape[1], m.hidden_size
    h0 = x.new_zeros(B, H)
    c0 = x.new_zeros(B, H) if mode == "lstm" else None

    def fwd():
        return recurrence.layer_forward(mode, x, h0, c0, weights, tiles=tiles)

    def fwd_bwd():
        y, cs, saved, mm = fwd()
        dgx, dgh, carry, _, dhs = recurrence.layer_backward_steps(
            mode, w[1], h0, c0, y, cs, saved, mm, None, dy, tiles=tiles)
        recurrence.layer_grads(x, w[0], w[1], h0, y, mm, dgx, dgh, carry, dhs, True)
    return fwd, fwd_bwd


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--T", type=int, default=100)
    ap.add_argument("--B", type=int, default=64)
    ap.add_argument("--H", type=int, default=512)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("tile_sweep: needs a CUDA GPU (Triton timings on CPU mean nothing)")
        return
    rows = []
    t0 = time.time()
    for kind, cls in (("lstm", fastcells.LSTM), ("gru", fastcells.GRU)):
        for dtype in (torch.float32, torch.bfloat16):
            base = bench_layer(cls, args.T, args.B, args.H, dtype, "native", False, None)
            rows.append((kind, str(dtype)[6:], "cudnn", "-", base))
            variants = [(True, c) for c in CONFIGS] + [(False, None)]
            if kind == "gru":
                variants = [(True, None), (False, None)]
            for graphs, tiles in variants:
                try:
                    r = bench_layer(cls, args.T, args.B, args.H, dtype, "triton", graphs, tiles)
                except Exception as e:  # a tile that does not compile: record, go on
                    print(f"{kind} {dtype} graphs={graphs} tiles={tiles}: {type(e).__name__}: {e}"[:300])
                    continue
                label = f"graphs={'on' if graphs else 'off'} tiles={tiles or 'default'}"
                rows.append((kind, str(dtype)[6:], "fastcells", label, r))
    print(f"\nT={args.T} B={args.B} H={args.H}  {torch.cuda.get_device_name()}  "
          f"({time.time() - t0:.0f} s)")
    print(f"{'cell':5} {'dtype':9} {'impl':10} {'variant':42} {'fwd ms':>8} {'fwd+bwd ms':>11}")
    for kind, dt, impl, label, r in rows:
        print(f"{kind:5} {dt:9} {impl:10} {label:42} {r['fwd'][0]:8.3f} {r['fwd+bwd'][0]:11.3f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump([dict(cell=k, dtype=d, impl=i, variant=lab, T=args.T, B=args.B, H=args.H,
                            device=torch.cuda.get_device_name(), ms=r) for k, d, i, lab, r in rows],
                      f, indent=1)


if __name__ == "__main__":
    main()
