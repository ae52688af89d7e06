"""What the GPU sweeps (bench/directions_sweep.py) share: the rows'
``meta`` block, the comparison of implementations that keeps a failing one as a result, and the
fwd / fwd+bwd timing of one module."""
import os
import subprocess
import time

import torch


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
