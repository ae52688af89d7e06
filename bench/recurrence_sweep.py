"""The step chain against the resident kernel (kernels/dispatch.py), with cuDNN beside them, over
small batches and hidden sizes (GPU only).  Its rows are what dispatch.RULES may be derived from.

python bench/recurrence_sweep.py --out FILE.json [--budget-s 90]

Shapes run most important first (small batches at T=1024, then the grid B x H x T for
LSTM and GRU in bf16 and fp32); a time budget stops it starting new shapes, and the rows are
written after every shape, so a cut run keeps what it measured.
"""
import argparse
import json
import os
import subprocess
import time

import torch

import fastcells
from fastcells.kernels import dispatch

CLASSES = {"lstm": fastcells.LSTM, "gru": fastcells.GRU}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
# (mode, dtype, B, H, T): small batches over long sequences first (B 1 and 16, T=1024,
# I = H = 256) ...
FIRST = [("lstm", "bf16", 16, 256, 1024), ("gru", "bf16", 16, 256, 1024),
         ("lstm", "fp32", 1, 256, 1024)]
# ... then the grid.
GRID = [(m, d, B, H, T) for T in (1024, 100) for m in ("lstm", "gru") for d in ("bf16", "fp32")
        for H in (256, 128) for B in (1, 16, 64)]


def plan():
    return FIRST + [s for s in GRID if s not in FIRST]


def _commit():
    """``FASTCELLS_COMMIT`` when set (the code of a copied tree), else ``git rev-parse HEAD``."""
    if os.environ.get("FASTCELLS_COMMIT"):
        return os.environ["FASTCELLS_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001 - no git there: the environment names it
        out = ""
    return out or "unknown"


def sweep_meta(**extra):
    """The ``meta`` block of a sweep's JSON: where and when it ran, and how it timed."""
    return dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, commit=_commit(),
                date=time.strftime("%Y-%m-%d"), I_equals_H=True, **extra,
                note="fwd under no_grad; fwd+bwd: forward and y.backward(dy); do_bench medians")


def compare(impls, measure_one):
    """Each of ``impls`` timed by ``measure_one(impl)`` ({pass: (median, p20, p80) ms}); a path
    that fails is a result, its error kept and printed.  Returns {pass: (ms, errors, medians)}
    for fwd and fwd+bwd: ms per impl (None where it failed), the errors by impl, the medians
    (nan where it failed)."""
    res = {}
    for impl in impls:
        try:
            res[impl] = measure_one(impl)
        except Exception as e:  # noqa: BLE001 - a failing path is a result
            res[impl] = {"error": f"{type(e).__name__}: {e}"[:300]}
    errors = {k: v["error"] for k, v in res.items() if "error" in v}
    for k, e in errors.items():
        print(f"  {k}: {e}", flush=True)
    out = {}
    for p in ("fwd", "fwd+bwd"):
        ms = {k: (None if k in errors else v.get(p)) for k, v in res.items()}
        out[p] = (ms, errors, {k: (v[0] if v else float("nan")) for k, v in ms.items()})
    return out


def measure(mode, dtype, B, H, T, impl):
    """{pass: (median, p20, p80) ms} for fwd and fwd+bwd of one layer (I = H)."""
    backend = "native" if impl == "cudnn" else "triton"
    os.environ[dispatch.ENV] = "auto" if impl == "cudnn" else impl
    torch.manual_seed(0)
    m = CLASSES[mode](H, H, backend=backend).cuda().to(DTYPES[dtype])
    return time_passes(m, T, B, H, DTYPES[dtype])


def time_passes(m, T, B, I, dtype):
    """{pass: (median, p20, p80) ms} of module ``m`` on a (T, B, I) input: fwd under no_grad,
    and fwd+bwd (forward, then y.backward(dy)); compilation and graph capture untimed."""
    from triton.testing import do_bench
    x = torch.randn(T, B, I, device="cuda", dtype=dtype, requires_grad=True)
    dy = torch.randn_like(m(x)[0]).detach()

    def fwd():
        with torch.no_grad():
            m(x)

    def fwd_bwd():
        m(x)[0].backward(dy)

    out = {}
    for name, fn in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
        fn()                       # compile and capture outside the timing
        torch.cuda.synchronize()
        out[name] = do_bench(fn, warmup=10, rep=60, quantiles=[0.5, 0.2, 0.8])
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget-s", type=float, default=90.0)
    ap.add_argument("--batches", default=None, help="comma list: only these B (default: all)")
    args = ap.parse_args(argv)
    only_B = None if not args.batches else {int(b) for b in args.batches.split(",")}
    if not torch.cuda.is_available():
        print("recurrence_sweep: needs a CUDA GPU (Triton timings on CPU mean nothing)")
        return 0
    meta = sweep_meta()
    rows, t0 = [], time.time()
    print(f"{'mode':5} {'dtype':5} {'B':>4} {'H':>4} {'T':>5} {'pass':8} "
          f"{'step ms':>9} {'resident':>9} {'cudnn':>9} {'res/step':>8} {'res/cudnn':>9}",
          flush=True)
    for mode, dtype, B, H, T in plan():
        if only_B is not None and B not in only_B:
            continue
        if time.time() - t0 > args.budget_s:
            meta["cut"] = f"budget {args.budget_s:.0f} s reached"
            break
        passes = compare(("step", "resident", "cudnn"),
                         lambda impl: measure(mode, dtype, B, H, T, impl))
        for p, (ms, errors, med) in passes.items():
            rows.append(dict(mode=mode, dtype=dtype, B=B, H=H, I=H, T=T, **{"pass": p}, ms=ms,
                             errors=errors))
            print(f"{mode:5} {dtype:5} {B:4d} {H:4d} {T:5d} {p:8} {med['step']:9.3f} "
                  f"{med['resident']:9.3f} {med['cudnn']:9.3f} "
                  f"{med['resident'] / med['step']:8.2f} {med['resident'] / med['cudnn']:9.2f}",
                  flush=True)
        with open(args.out, "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=1)
    os.environ.pop(dispatch.ENV, None)
    print(f"{len(rows)} rows in {time.time() - t0:.0f} s -> {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
