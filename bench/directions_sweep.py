"""Bidirectional layers: both directions in the same launches (FASTCELLS_DIRECTIONS=fused)
against one direction after the other (separate, the default), with cuDNN beside them (GPU
only).  Its rows decide whether the experimental fused path (fastcells.experimental) turns on by default.

python bench/directions_sweep.py --out FILE.json [--budget-s 90]

Shapes run most important first (the benchmark's fastrnns-2L-bidir case, then small batches
where launches dominate); rows are written after every shape, so a cut run keeps them.
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fastcells                                       # noqa: E402
from bench.sweeps import compare, sweep_meta, time_passes  # noqa: E402
from fastcells.kernels.config import DIRECTIONS  # noqa: E402

CLASSES = {"lstm": fastcells.LSTM, "gru": fastcells.GRU}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
# (mode, dtype, layers, B, H, T), I = H
PLAN = [("lstm", "bf16", 2, 64, 512, 100), ("lstm", "fp32", 2, 64, 512, 100),
        ("gru", "bf16", 2, 64, 512, 100), ("lstm", "bf16", 1, 16, 256, 1024),
        ("lstm", "fp32", 1, 1, 256, 1024), ("gru", "bf16", 1, 16, 256, 1024)]


def measure(mode, dtype, L, B, H, T, impl):
    """{pass: (median, p20, p80) ms} for fwd and fwd+bwd of one bidirectional module."""
    os.environ[DIRECTIONS.var] = "separate" if impl == "cudnn" else impl
    torch.manual_seed(0)
    m = CLASSES[mode](H, H, num_layers=L, bidirectional=True,
                      backend="native" if impl == "cudnn" else "triton")
    return time_passes(m.cuda().to(DTYPES[dtype]), T, B, H, DTYPES[dtype])


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget-s", type=float, default=90.0)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("directions_sweep: needs a CUDA GPU (Triton timings on CPU mean nothing)")
        return 0
    meta = sweep_meta(bidirectional=True)
    rows, t0 = [], time.time()
    print(f"{'mode':5} {'dtype':5} {'L':>2} {'B':>4} {'H':>4} {'T':>5} {'pass':8} "
          f"{'separate':>9} {'fused':>9} {'cudnn':>9} {'fused/sep':>9}", flush=True)
    for mode, dtype, L, B, H, T in PLAN:
        if time.time() - t0 > args.budget_s:
            meta["cut"] = f"budget {args.budget_s:.0f} s reached"
            break
        passes = compare(("separate", "fused", "cudnn"),
                         lambda impl: measure(mode, dtype, L, B, H, T, impl))
        for p, (ms, errors, med) in passes.items():
            rows.append(dict(mode=mode, dtype=dtype, layers=L, B=B, H=H, I=H, T=T,
                             **{"pass": p}, ms=ms, errors=errors))
            print(f"{mode:5} {dtype:5} {L:2d} {B:4d} {H:4d} {T:5d} {p:8} {med['separate']:9.3f} "
                  f"{med['fused']:9.3f} {med['cudnn']:9.3f} "
                  f"{med['fused'] / med['separate']:9.2f}", flush=True)
        with open(args.out, "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=1)
    os.environ.pop(DIRECTIONS.var, None)
    print(f"{len(rows)} rows in {time.time() - t0:.0f} s -> {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
