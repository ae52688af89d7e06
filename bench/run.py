"""Run the benchmarks and write one JSON file of rows (plus, by default, the markdown table and
the PNG plots drawn from it).

    python bench/run.py --quick                      # the GPU check's small run
    python bench/run.py --layers                     # recurrent layers, fastcells vs native,
                                                     # most important first, within 8 minutes
    python bench/run.py                              # every case, dtype and baseline
    python bench/run.py --ops lstm,clip --dtypes bf16 --out /tmp/results
    python bench/run.py --host                       # host time per call (bench/host_overhead.py;
                                                     # on CPU with TRITON_INTERPRET=1)

Without a CUDA GPU it says that the Triton kernels need one to be timed, and times what the CPU
can honestly compare: torch's native modules, the cell loop, the reference path (eager and
compiled) and torch's clip.
"""
import argparse
import gc
import json
import math
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: import the bench package from the repository, and keep bench/ itself off
    # sys.path so that its module names cannot shadow anyone else's.
    _here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(_here)]
    sys.path.append(str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench import cases, floors, timing, workloads  # noqa: E402
from bench.env import ROOT, environment, slug  # noqa: E402
from fastcells.kernels import cuda_graph  # noqa: E402

DEFAULT_OUT = ROOT / "bench" / "results"
CPU_NOTICE = (
    "No CUDA GPU here: the fastcells Triton kernels need one to be timed (Triton's interpreter "
    "runs them on CPU to check their arithmetic, not their speed), so there are no fastcells "
    "rows. Timing what this CPU can honestly compare: torch's native modules, the nn cell loop, "
    "the fastcells reference path (eager and under torch.compile) and torch's clip.")
# Timer settings per plan: do_bench's warm-up and repetition (ms) on CUDA; on CPU the loop
# runs for about rep_ms (at least min_reps calls) after one warm-up call.
SETTINGS = {
    "full": dict(rep_ms=100, warmup_ms=25, host_rep_ms=300, min_reps=5),
    "quick": dict(rep_ms=100, warmup_ms=25, host_rep_ms=300, min_reps=5),
    "layers": dict(rep_ms=100, warmup_ms=25, host_rep_ms=300, min_reps=5),
    "smoke": dict(rep_ms=1, warmup_ms=1, host_rep_ms=1, min_reps=2),
}
# --budget-s when not given: the layers plan holds more than 8 minutes of cases and is meant to
# end within 8 (no new case starts after 420 s; a started one finishes, the rest are skipped).
DEFAULT_BUDGET_S = {"layers": 420.0}
SMOKE_FLOORS = dict(copy_elems=2**16, matmul_n=64, rep_ms=1, step_n=100)
# Row fields, in order: the fields every row carries first, then what the report and plots use.
SCHEMA = ("op", "impl", "pass", "dtype", "shape", "ms", "ms_p20", "ms_p80", "floor_ms",
          "peak_mem_mb", "device", "torch", "triton", "commit", "date")
EXTRA = ("case", "floor_ratio", "seq_floor_ms", "flops", "bytes", "tflop_s", "gb_s", "host_ms", "host_ms_p20",
         "host_ms_p80", "first_call_ms", "timer", "error")


class CudaContextLost(RuntimeError):
    pass


def _row(case, impl, pass_, dtype, env, hw, timer, *, ms=None, host=None, first=None, peak=None,
         error=None):
    flops, elems = floors.model(case)[pass_]
    nbytes = elems * torch.finfo(dtype).bits // 8
    steps = floors.dependent_steps(case, pass_)
    floor = hw.floor_ms(flops, nbytes, dtype, steps)
    med, p20, p80 = ms if ms else (None, None, None)
    hmed, hp20, hp80 = host if host else (None, None, None)
    row = dict(op=case.op, impl=impl, dtype=cases.dtype_name(dtype), shape=case.shape(),
               ms=med, ms_p20=p20, ms_p80=p80, floor_ms=floor, peak_mem_mb=peak, **env,
               case=case.name, floor_ratio=med / floor if med and floor else None,
               seq_floor_ms=hw.sequential_ms(steps),
               flops=flops, bytes=nbytes,
               tflop_s=flops / med / 1e9 if med and flops else None,
               gb_s=nbytes / med / 1e6 if med else None,
               host_ms=hmed, host_ms_p20=hp20, host_ms_p80=hp80, first_call_ms=first,
               timer=timer, error=error)
    row["pass"] = pass_
    return {k: row[k] for k in SCHEMA + EXTRA}


def _check_cuda(device):
    """Raise CudaContextLost when an error has left the CUDA context unusable."""
    if device.type != "cuda":
        return
    try:
        torch.cuda.synchronize(device)
        torch.ones(1, device=device).add_(1).item()
    except Exception as e:  # noqa: BLE001 - any failure here means the context is gone
        raise CudaContextLost(f"CUDA context lost: {type(e).__name__}: {e}") from e


def _error_text(e):
    text = f"{type(e).__name__}: {e}".strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def _measure(p, device, settings, host):
    """(device quantiles, host quantiles or None, first call ms, peak MiB) of one Pass."""
    if p.setup is not None:
        p.setup()
    first = timing.first_call_ms(p.fn, device)
    ms = timing.device_time(p.fn, device, rep_ms=settings["rep_ms"],
                            warmup_ms=settings["warmup_ms"], min_reps=settings["min_reps"])
    host_q = None
    if host:
        host_q = (timing.host_time(p.fn, device, rep_ms=settings["host_rep_ms"],
                                   min_reps=settings["min_reps"])
                  if device.type == "cuda" else ms)      # on CPU the call is the work
    peak = timing.peak_memory_mb(p.fn, device)
    return ms, host_q, first, peak


def _free(device):
    """Give the last case's device memory back before the next one is built."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def run(jobs, device, *, mode="quick", budget_s=None, allow_interpreter=False, log=print,
        on_rows=None, floors_kw=None):
    """Time ``jobs`` on ``device``; returns (meta, rows).  ``on_rows(meta, rows)`` is called
    after every implementation of every case (the CLI rewrites its JSON file there, so a killed
    run keeps its rows)."""
    t_start = time.perf_counter()
    settings = SETTINGS[mode]
    env, extra = environment(device)
    timer = "do_bench" if device.type == "cuda" else "perf_counter"
    dtypes = list(dict.fromkeys(cases.DTYPES[d] for j in jobs for d in j.dtypes))
    log(f"device: {env['device']}  torch {env['torch']}  triton {env['triton']}  "
        f"commit {env['commit']}")
    hw = floors.measure(device, dtypes, **(floors_kw or {}))
    hwd = hw.as_dict(cases.dtype_name)
    log(f"floors: copy {hwd['copy_gb_s']:.1f} GB/s; matmul " + ", ".join(
        f"{k} {v:.2f} TFLOP/s" for k, v in hwd["matmul_tflop_s"].items())
        + f" (fp32 TF32: {extra['tf32_matmul']})")
    log("sequential bound: " + (hwd["step_note"] if hwd["step_us"] is None else
                                f"{hwd['step_us']:.3g} us a dependent step"))
    notes = []
    if device.type != "cuda":
        notes.append(CPU_NOTICE)
        if extra["load_avg"] is not None and extra["load_avg"] >= 0.5 * (os.cpu_count() or 1):
            notes.append(f"This machine was busy at the start (load average {extra['load_avg']:.1f} "
                         f"on {os.cpu_count()} CPUs): torch's multi-threaded CPU kernels slow down "
                         "by orders of magnitude when other processes hold its cores, so these "
                         "CPU timings are noisy.")
    meta = dict(schema=1, mode=mode, **env, **extra, timer=timer, hardware=hwd, notes=notes,
                skipped=[], aborted=None, elapsed_s=None, argv=sys.argv[1:])
    rows = []
    for job in jobs:
        case = job.case
        for dname in job.dtypes:
            dtype = cases.DTYPES[dname]
            for impl in job.impls:
                where = dict(op=case.op, case=case.name, impl=impl, dtype=dname)
                if meta["aborted"]:
                    meta["skipped"].append(dict(where, reason=meta["aborted"]))
                    continue
                if budget_s is not None and time.perf_counter() - t_start > budget_s:
                    meta["skipped"].append(dict(where, reason=f"time budget of {budget_s:.0f} s spent"))
                    continue
                reason = workloads.not_applicable(case, impl, device, allow_interpreter)
                if reason:
                    meta["skipped"].append(dict(where, reason=reason))
                    continue
                try:
                    rows += _run_one(case, impl, dtype, device, env, hw, timer, settings, log)
                except CudaContextLost as e:
                    meta["aborted"] = str(e)
                    log(f"ABORT: {e}; the remaining cases are skipped")
                _free(device)
                meta["elapsed_s"] = time.perf_counter() - t_start
                if on_rows is not None:
                    on_rows(meta, rows)
    meta["elapsed_s"] = time.perf_counter() - t_start
    return meta, rows


def _run_one(case, impl, dtype, device, env, hw, timer, settings, log):
    """The rows of one (case, impl, dtype): one per pass, an error row where it failed."""
    rows = []
    if impl == "fastcells" and device.type != "cuda":
        timer = "perf_counter under the Triton interpreter: not a speed"
    # The peak-memory figure counts the CUDA graphs fastcells keeps between calls: only this
    # workload's, not those an earlier case left in the cache.
    cuda_graph.clear()
    try:
        passes = workloads.build(case, impl, dtype, device)
    except Exception as e:  # noqa: BLE001 - a failing implementation is a result, not a crash
        _check_cuda(device)
        passes, build_error = {}, _error_text(e)
    else:
        build_error = None
    for pass_ in case.passes:
        kw = {}
        if build_error:
            kw["error"] = build_error
        else:
            try:
                ms, host, first, peak = _measure(passes[pass_], device, settings,
                                                 host=isinstance(case, cases.ClipCase))
                kw = dict(ms=ms, host=host, first=first, peak=peak)
            except Exception as e:  # noqa: BLE001
                kw["error"] = _error_text(e)
                _check_cuda(device)
        row = _row(case, impl, pass_, dtype, env, hw, timer, **kw)
        rows.append(row)
        log(_progress_line(row))
    return rows


def _progress_line(r):
    head = f"  {r['op']:<9} {r['case']:<18} {r['dtype']:<4} {r['impl']:<18} {r['pass']:<7}"
    if r["error"]:
        return f"{head} ERROR {r['error']}"
    text = f"{head} {r['ms']:10.4f} ms  floor {r['floor_ms']:.4f} ms ({r['floor_ratio']:.1f}x)"
    if r["host_ms"] is not None:
        text += f"  host {r['host_ms']:.4f} ms  {r['gb_s']:.0f} GB/s"
    return text


# ------------------------------------------------------------------------------------ files
def _finite(value):
    """JSON has no NaN or infinity: write null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_json(path, meta, rows):
    """Write {"meta": ..., "rows": [...]} atomically (a killed run leaves the last good file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(_finite({"meta": meta, "rows": rows}), f, indent=1, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)


def result_path(out_dir, env, mode):
    """bench/results/2026-11-26_NVIDIA-H100-80GB-HBM3[_quick|_layers].json, never overwriting."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{env['date'][:10]}_{slug(env['device'])}" + ("" if mode == "full" else f"_{mode}")
    path, n = out_dir / f"{stem}.json", 1
    while path.exists():
        n += 1
        path = out_dir / f"{stem}-{n}.json"
    return path


# -------------------------------------------------------------------------------------- CLI
def _names(text, allowed, what, aliases=None, groups=None):
    if not text:
        return None
    out = []
    for name in (s.strip() for s in text.split(",") if s.strip()):
        name = (aliases or {}).get(name, name)
        if groups and name in groups:
            out += groups[name]
        elif name in allowed:
            out.append(name)
        else:
            raise SystemExit(f"unknown {what} {name!r}; expected one of "
                             f"{', '.join([*(groups or {}), *allowed])}")
    return out


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python bench/run.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    plans = p.add_mutually_exclusive_group()
    plans.add_argument("--quick", action="store_true", help="the small plan of the GPU check")
    plans.add_argument("--layers", action="store_true",
                       help="the recurrent layers, fastcells against native, most important first "
                            "(bf16, fp32, fp16); --budget-s defaults to 420 here")
    plans.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # tiny shapes: tests
    p.add_argument("--ops", help="comma list of " + ", ".join(["layers", "cells", *cases.OPS]))
    p.add_argument("--cases", help="comma list of case names (fastrnns, packed-B64-T100, ...)")
    p.add_argument("--dtypes", help="comma list of " + ", ".join(cases.DTYPES))
    p.add_argument("--impls", help="comma list of " + ", ".join(cases.IMPLS))
    p.add_argument("--out", default=str(DEFAULT_OUT), help="results folder (default bench/results)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="start no new case after this many seconds (the rows so far are kept)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    p.add_argument("--host", action="store_true",
                   help="measure host time per call instead (bench/host_overhead.py)")
    p.add_argument("--no-report", action="store_true",
                   help="write the JSON only (bench/report.py draws the table and plots later)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.host:
        from bench import host_overhead
        return host_overhead.main(["--device", args.device] if args.device else [])
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    mode = ("smoke" if args.smoke else "quick" if args.quick else "layers" if args.layers
            else "full")
    jobs = cases.select(
        cases.plan(mode, device),
        ops=_names(args.ops, cases.OPS, "op", groups=cases.OP_GROUPS),
        dtypes=_names(args.dtypes, cases.DTYPES, "dtype", aliases=cases.DTYPE_ALIASES),
        impls=_names(args.impls, cases.IMPLS, "implementation"),
        names=[n.strip() for n in args.cases.split(",") if n.strip()] if args.cases else None)
    if not jobs:
        raise SystemExit("nothing to run: --ops/--dtypes/--impls/--cases left no case of this "
                         "plan")
    if device.type != "cuda":
        print(f"NOTE: {CPU_NOTICE}", flush=True)
    env, _ = environment(device)
    path = result_path(args.out, env, mode)
    print(f"{mode} run: {len(jobs)} cases -> {path}", flush=True)
    budget_s = args.budget_s if args.budget_s is not None else DEFAULT_BUDGET_S.get(mode)
    if budget_s is not None:
        print(f"time budget: no new case starts after {budget_s:.0f} s", flush=True)
    meta, rows = run(jobs, device, mode=mode, budget_s=budget_s,
                     log=lambda s: print(s, flush=True),
                     on_rows=lambda m, r: write_json(path, m, r),
                     floors_kw=SMOKE_FLOORS if mode == "smoke" else None)
    write_json(path, meta, rows)
    errors = sum(1 for r in rows if r["error"])
    print(f"wrote {path}: {len(rows)} rows ({errors} errors), {len(meta['skipped'])} skipped, "
          f"{meta['elapsed_s']:.0f} s", flush=True)
    if not args.no_report:
        from bench import report
        try:
            for written in report.write(path):
                print(f"wrote {written}", flush=True)
        except report.Unpublishable as e:   # the rows are kept; the tables are refused
            print(f"no table or plots: {e}", flush=True)
    return 0 if not meta["aborted"] else 1


if __name__ == "__main__":
    sys.exit(main())
