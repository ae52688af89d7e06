"""The persistent layer kernel (FASTCELLS_RECURRENCE=persistent) against the step chain
(FASTCELLS_RECURRENCE=step: one fused launch per step, CUDA-graphed) against cuDNN (torch.nn,
backend="native"), on a GPU.  Its rows write the dispatch table that ``auto`` reads
(fastcells.kernels.persistent.TABLE_PATH), and its summary reports issue 23's targets.

python bench/persistent_sweep.py --out FILE.json [--budget-s 150] [--table PATH]
python bench/persistent_sweep.py --out FILE.json --dry-run     # the plumbing on CPU

Shapes run most important first (the targets' shapes, the other cells, packed, two
bidirectional layers, then the B x H x T grid, the shapes the kernel runs before those it does
not, cheap before dear); no new shape starts after ``--budget-s`` and the rows are written after
every shape, so a cut run keeps them.  Each row: fwd (no_grad) and fwd+bwd medians
(``bench.sweeps.time_passes``) of the three, the peak memory of one fwd+bwd call of each
(``bench.timing.peak_memory_mb``), the persistent plan (``persistent.plan``: None where the
kernel is not eligible; there the forced path is the step chain, so it is not timed twice) and
how many persistent launches one fwd+bwd call made.

``--dry-run`` runs the same plan on CPU through Triton's interpreter (TRITON_INTERPRET=1), every
shape scaled down to T<=3, B<=2, H<=16, timed with ``time.perf_counter``: it proves the script's
plumbing, its timings mean nothing, its rows say ``"dry_run": true``, and it writes a table only
where ``--table`` is given.
"""
import argparse
import contextlib
import json
import os
import sys
import time
from typing import NamedTuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

IMPLS = ("persistent", "step", "cudnn")
DTYPE_NAMES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}   # table: torch's names
PASSES = ("fwd", "fwd+bwd")
DRY_T, DRY_B, DRY_H = 3, 2, 16


class Shape(NamedTuple):
    cell: str            # fastcells.cells.CELLS: lstm, gru, rnn_tanh, rnn_relu
    dtype: str           # fp16, bf16, fp32
    B: int
    H: int               # I = H
    T: int
    layers: int = 1
    bidirectional: bool = False
    packed: bool = False   # lengths spread over 1..T (bench.cases.spread_lengths)

    def label(self):
        extra = ((f" L{self.layers}" if self.layers > 1 else "")
                 + (" bidir" if self.bidirectional else "") + (" packed" if self.packed else ""))
        return f"{self.cell} {self.dtype} B={self.B} H={self.H} T={self.T}{extra}"


FASTRNNS = dict(B=64, H=512, T=100)
FLASHRNN = dict(B=16, H=768, T=1024)
# The targets' shapes and the other kinds of layer, in this order.
FIRST = [Shape("lstm", "fp16", **FASTRNNS), Shape("lstm", "bf16", **FASTRNNS),
         Shape("lstm", "fp32", **FASTRNNS),
         Shape("lstm", "fp16", **FLASHRNN), Shape("lstm", "bf16", **FLASHRNN),
         Shape("lstm", "bf16", B=1, H=256, T=1024), Shape("lstm", "bf16", B=16, H=256, T=1024),
         Shape("gru", "bf16", **FASTRNNS), Shape("rnn_tanh", "bf16", **FASTRNNS),
         Shape("lstm", "bf16", **FASTRNNS, packed=True),
         Shape("lstm", "bf16", **FASTRNNS, layers=2, bidirectional=True)]
# bf16 LSTM over B x H x T (those not in FIRST), ordered at run time by ``order_grid``.
GRID = [Shape("lstm", "bf16", B=B, H=H, T=T) for T in (100, 1024) for H in (256, 512, 1024)
        for B in (1, 16, 64, 256)]
LAST = [Shape("rnn_relu", "bf16", **FASTRNNS)]


def sweep_plan():
    """Every shape once, FIRST, then GRID (unordered), then LAST."""
    seen, out = set(), []
    for s in FIRST + GRID + LAST:
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def order_grid(shapes, eligible):
    """FIRST's shapes as they are; the grid's: the ones ``eligible(shape)`` says the persistent
    kernel runs first, then by T and by the work of a step (B*H*H), cheapest first; LAST last."""
    first = [s for s in shapes if s in FIRST]
    last = [s for s in shapes if s in LAST]
    grid = [s for s in shapes if s not in FIRST and s not in LAST]
    grid.sort(key=lambda s: (not eligible(s), s.T, s.B * s.H * s.H))
    return first + grid + last


def dry_shape(s):
    """``s`` scaled down for the interpreter: T<=3, B<=2, H<=16."""
    return s._replace(B=min(s.B, DRY_B), H=min(s.H, DRY_H), T=min(s.T, DRY_T))


# ----------------------------------------------------------------------- measuring (GPU or dry)
def _torch_dtype(name):
    import torch
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[name]


def _module(s, impl, device):
    import fastcells
    import torch
    cls = {"lstm": fastcells.LSTM, "gru": fastcells.GRU, "rnn_tanh": fastcells.RNN,
           "rnn_relu": fastcells.RNN}[s.cell]
    kw = dict(nonlinearity=s.cell[4:]) if s.cell.startswith("rnn") else {}
    torch.manual_seed(0)
    m = cls(s.H, s.H, num_layers=s.layers, bidirectional=s.bidirectional,
            backend="native" if impl == "cudnn" else "triton", **kw)
    m = m.to(device=device, dtype=_torch_dtype(s.dtype))
    if not s.packed:
        return m
    return _Packed(m, s.B, s.T)


def _packed_class():
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence

    from bench.cases import spread_lengths

    class Packed(torch.nn.Module):
        """The whole user call of bench's packed case: ``pack_padded_sequence(x, lengths,
        enforce_sorted=False)`` of the padded input and host lengths (spread over 1..T), then
        the layer; returns the packed output's ``.data`` first, as time_passes wants."""

        def __init__(self, net, B, T):
            super().__init__()
            self.net = net
            self.lengths = torch.tensor(spread_lengths(B, T))   # on the host, as packing wants

        def forward(self, x):
            out, state = self.net(pack_padded_sequence(x, self.lengths, enforce_sorted=False))
            return out.data, state
    return Packed


def _Packed(net, B, T):
    return _packed_class()(net, B, T)


def _time_passes(m, s, device):
    """{pass: (median, p20, p80) ms}: ``bench.sweeps.time_passes`` on CUDA; on CPU (a dry run)
    the same two calls timed with ``time.perf_counter`` (bench.timing.wall_time)."""
    import torch

    from bench.sweeps import time_passes
    from bench.timing import wall_time
    dtype = _torch_dtype(s.dtype)
    if device.type == "cuda":
        return time_passes(m, s.T, s.B, s.H, dtype)
    x = torch.randn(s.T, s.B, s.H, dtype=dtype, requires_grad=True)
    dy = torch.randn_like(m(x)[0]).detach()

    def fwd():
        with torch.no_grad():
            m(x)
    return {"fwd": wall_time(fwd, 0, warmup=1, min_reps=2),
            "fwd+bwd": wall_time(lambda: m(x)[0].backward(dy), 0, warmup=1, min_reps=2)}


@contextlib.contextmanager
def count_persistent_launches():
    """Counts the persistent kernel's launch rounds (``persistent._run``, which both the forward
    and the backward of that path call) while the block runs: [n], or [None] where the module
    has no ``_run`` to watch."""
    from fastcells.kernels import persistent
    box = [0]
    real = getattr(persistent, "_run", None)
    if real is None:
        box[0] = None
        yield box
        return

    def counted(*args, **kwargs):
        box[0] += 1
        return real(*args, **kwargs)
    persistent._run = counted
    try:
        yield box
    finally:
        persistent._run = real


def _peak_and_launches(m, s, device):
    """(MiB at the peak of one fwd+bwd call beyond what was held before it, None on CPU;
    persistent launch rounds in that call)."""
    import torch

    from bench.timing import peak_memory_mb
    x = torch.randn(s.T, s.B, s.H, device=device, dtype=_torch_dtype(s.dtype), requires_grad=True)
    dy = torch.randn_like(m(x)[0]).detach()

    def call():
        m(x)[0].backward(dy)
    call()                               # compiled and captured before the count
    with count_persistent_launches() as n:
        peak = peak_memory_mb(call, device)
        if peak is None:
            call()
    return peak, n[0]


def measure(s, impl, device, extra):
    """{pass: (median, p20, p80) ms} of ``impl`` on shape ``s``; its peak MiB and persistent
    launches go to ``extra[impl]``."""
    from fastcells.kernels.config import RECURRENCE
    os.environ[RECURRENCE.var] = "step" if impl == "cudnn" else impl
    try:
        return _measure(s, impl, device, extra)
    finally:
        _free(device)      # the module and its tensors are gone with _measure's frame


def _measure(s, impl, device, extra):
    m = _module(s, impl, device)
    out = _time_passes(m, s, device)
    peak, launches = _peak_and_launches(m, s, device)
    extra[impl] = dict(peak_mem_mb=peak, launches=launches)
    return out


def _free(device):
    """Give a measurement's device memory back (its module, the step chain's cached CUDA
    graphs) before the next is built."""
    import gc

    import torch

    from fastcells.kernels import cuda_graph
    cuda_graph.clear()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def persistent_plan(s, device):
    """``persistent.plan`` of shape ``s`` (its fields as a dict), or None: not eligible; or an
    error string where planning itself failed."""
    from fastcells.cells import CELLS
    from fastcells.kernels import config, persistent
    members = 2 if s.bidirectional and config.fused_directions() else 1
    try:
        p = persistent.plan(CELLS[s.cell].kernels, s.B, s.H, _torch_dtype(s.dtype), device,
                            members=members)
    except Exception as e:  # noqa: BLE001 - a failing plan is a result
        return f"{type(e).__name__}: {e}"[:300]
    if p is None:
        return None
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in p._asdict().items()}


def sweep_row(s, passes, extra, plan, dry):
    """One shape's row from ``compare``'s result."""
    ms = {p: passes[p][0] for p in PASSES}
    errors = passes["fwd"][1]
    launches = extra.get("persistent", {}).get("launches")
    return dict(cell=s.cell, dtype=s.dtype, layers=s.layers, bidirectional=s.bidirectional,
                packed=s.packed, B=s.B, H=s.H, I=s.H, T=s.T,
                ms={p: {k: (list(v) if v else None) for k, v in ms[p].items()} for p in PASSES},
                errors=errors,
                peak_mem_mb={k: extra.get(k, {}).get("peak_mem_mb") for k in IMPLS},
                persistent_plan=plan if isinstance(plan, dict) else None,
                persistent_plan_error=plan if isinstance(plan, str) else None,
                persistent_launches=launches,
                persistent_ran=None if launches is None else launches > 0,
                dry_run=dry)


# ---------------------------------------------------------------------------- table and summary
def _median(row, p, impl):
    v = (row.get("ms") or {}).get(p, {}).get(impl)
    return None if v is None else v[0]


def choice(row):
    """"persistent" only where the persistent kernel ran (its launches counted, or, where they
    could not be, its plan eligible) and beat the step chain in both fwd and fwd+bwd; else
    "step" (a failed, ineligible or unmeasured persistent run included)."""
    ran = row.get("persistent_ran")
    if ran is None:
        ran = row.get("persistent_plan") is not None
    if not ran:
        return "step"
    for p in PASSES:
        pers, step = _median(row, p, "persistent"), _median(row, p, "step")
        if pers is None or step is None or not pers < step:
            return "step"
    return "persistent"


def table_rows(rows):
    """The dispatch table's rows (fastcells.kernels.persistent reads them) from the sweep's."""
    out = []
    for r in rows:
        t = dict(cell=r["cell"], dtype=DTYPE_NAMES[r["dtype"]], H=r["H"], B=r["B"], T=r["T"],
                 packed=r["packed"], layers=r["layers"], bidirectional=r["bidirectional"])
        for impl in IMPLS:
            t[f"{impl}_ms"] = _median(r, "fwd+bwd", impl)
        for impl in IMPLS:
            t[f"{impl}_fwd_ms"] = _median(r, "fwd", impl)
        t["persistent_ran"] = r.get("persistent_ran")
        t["choice"] = choice(r)
        out.append(t)
    return out


def write_table(path, sweep, source):
    """Write the dispatch table of ``sweep`` ({"meta", "rows"}) to ``path``; returns it."""
    meta = sweep["meta"]
    table = dict(meta=dict(gpu=meta["gpu"], commit=meta["commit"], date=meta["date"],
                           source=os.path.basename(source),
                           rule="persistent only where it ran and beat the step chain in fwd "
                                "and fwd+bwd; lookup: the smallest measured (H, B) bucket "
                                "covering the layer, persistent only if all its rows say so",
                           **({"dry_run": True} if meta.get("dry_run") else {})),
                 rows=table_rows(sweep["rows"]))
    with open(path, "w") as f:
        json.dump(table, f, indent=1)
    return table


def lookup(table_rows_, cell, dtype, H, B):
    """The path ``auto`` takes for a (cell, dtype, H, B) layer by the table's rule (one GPU's
    rows): the smallest measured (H, B) bucket with H_row >= H and B_row >= B decides, and
    persistent only where every row of it says so; no covering row: step."""
    mine = [r for r in table_rows_ if r["cell"] == cell and r["dtype"] == dtype
            and r["H"] >= H and r["B"] >= B]
    if not mine:
        return "step"
    bucket = min((r["H"], r["B"]) for r in mine)
    same = [r for r in mine if (r["H"], r["B"]) == bucket]
    return "persistent" if all(r["choice"] == "persistent" for r in same) else "step"


def _find(rows, shape):
    """The row of ``shape`` (a Shape), or None."""
    for r in rows:
        if all(r.get(k) == v for k, v in shape._asdict().items()):
            return r
    return None


def _ratio(a, b):
    return None if a is None or b is None else a / b


def targets(rows, scale=None):
    """Issue 23's targets from the sweep's rows: [(name, value, limit, note)], value None where
    not measured; ratios are fastcells persistent (forced) / cuDNN, fwd+bwd unless named.
    ``scale`` maps the targets' shapes to the rows' (``dry_shape`` for a dry run)."""
    out = []

    def find(**key):
        s = Shape(**key)
        return _find(rows, scale(s) if scale else s)
    fr16 = find(cell="lstm", dtype="fp16", **FASTRNNS)
    fl16 = find(cell="lstm", dtype="fp16", **FLASHRNN)
    fl_bf = find(cell="lstm", dtype="bf16", **FLASHRNN)
    frbf = find(cell="lstm", dtype="bf16", **FASTRNNS)
    packed = find(cell="lstm", dtype="bf16", packed=True, **FASTRNNS)
    T_flash = fl16["T"] if fl16 else FLASHRNN["T"]

    def ran(r):
        if r is None or r.get("persistent_ran"):
            return ""
        if r.get("persistent_ran") is False:
            return " (persistent did not run: the step chain)"
        why = (r.get("errors") or {}).get("persistent", "its launches were not counted")
        return f" (persistent: {why})"[:120]

    def vs(r, ref, p="fwd+bwd"):
        return _ratio(_median(r, p, "persistent") if r else None,
                      _median(ref, p, "cudnn") if ref else None)

    out.append(("fp16 fastrnns fwd+bwd / cuDNN fp16", vs(fr16, fr16), 0.8, ran(fr16)))
    out.append(("FlashRNN shape fp16 fwd+bwd / cuDNN fp16", vs(fl16, fl16), 1.0, ran(fl16)))
    out.append(("FlashRNN shape bf16 fwd+bwd / cuDNN fp16", vs(fl_bf, fl16), 1.0, ran(fl_bf)))
    for name, r in (("fp16", fl16), ("bf16", fl_bf)):
        fwd = _median(r, "fwd", "persistent") if r else None
        out.append((f"FlashRNN shape {name} forward us/step", None if fwd is None
                    else fwd * 1e3 / T_flash, 2.5, ran(r)))
    out.append(("bf16 fastrnns fwd+bwd / cuDNN bf16", vs(frbf, frbf), 0.25, ran(frbf)))
    out.append(("packed bf16 (lengths 1..100) fwd+bwd / cuDNN", vs(packed, packed), 0.6,
                ran(packed)))
    for B in (1, 16):
        r = find(cell="lstm", dtype="bf16", B=B, H=256, T=1024)
        out.append((f"small batch B={B} T=1024 H=256 bf16 / cuDNN", vs(r, r), 0.3, ran(r)))
    mem = [(_ratio(r["peak_mem_mb"].get("persistent"), r["peak_mem_mb"].get("cudnn")), r)
           for r in rows if r.get("persistent_ran")]
    mem = [(v, r) for v, r in mem if v is not None]
    worst = max(mem, key=lambda vr: vr[0]) if mem else (None, None)
    out.append(("peak memory persistent / torch.nn (worst row it ran)", worst[0], 1.0,
                f" ({Shape(*[worst[1][k] for k in Shape._fields]).label()}, {len(mem)} rows)"
                if worst[1] else ""))
    trows = table_rows(rows)
    slower = [t for t in trows
              if lookup(trows, t["cell"], t["dtype"], t["H"], t["B"]) == "persistent"
              and any(t[f"persistent{p}_ms"] is None or t[f"step{p}_ms"] is None
                      or t[f"persistent{p}_ms"] >= t[f"step{p}_ms"] for p in ("", "_fwd"))]
    chosen = sum(t["choice"] == "persistent" for t in trows)
    out.append(("shapes slower than the step chain under the measured rule",
                len(slower) if trows else None, 0,
                f" ({chosen} of {len(trows)} rows choose persistent)"))
    return out


def format_targets(items):
    lines = ["targets (issue 23; fastcells persistent / cuDNN unless named):"]
    for name, value, limit, note in items:
        if value is None:
            lines.append(f"  {name:58} not measured{note}")
            continue
        met = "met" if value <= limit else "NOT met"
        shown = f"{value:d}" if isinstance(value, int) else f"{value:.3f}"
        lines.append(f"  {name:58} {shown:>7}  (target <= {limit})  {met}{note}")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------- smoke
def smoke(device, dry):
    """One fwd+bwd of the bf16 LSTM at the fastrnns shape with the persistent path forced,
    against the step chain: whether its kernels launched, finished and gave finite values
    near the step chain's (gpu_check.sh runs it under a short timeout before anything else
    forces the path, so a grid barrier that hangs costs seconds).  Returns the exit status."""
    import torch

    from fastcells.kernels.config import RECURRENCE
    s = dry_shape(FIRST[1]) if dry else FIRST[1]
    plan = persistent_plan(s, device)
    print(f"smoke: {s.label()}: plan {plan}", flush=True)
    if not isinstance(plan, dict):
        print("smoke: the persistent kernel is not eligible here")
        return 1
    x = torch.randn(s.T, s.B, s.H, device=device, dtype=_torch_dtype(s.dtype))
    dy = torch.randn(s.T, s.B, s.H, device=device, dtype=x.dtype)
    got, saved = {}, os.environ.get(RECURRENCE.var)
    try:
        for impl in ("step", "persistent"):
            os.environ[RECURRENCE.var] = impl
            m = _module(s, impl, device)
            xi = x.clone().requires_grad_()
            t0 = time.perf_counter()
            with count_persistent_launches() as n:
                y = m(xi)[0]
                y.backward(dy)
                if device.type == "cuda":
                    torch.cuda.synchronize()
            got[impl] = (y.detach().float(), xi.grad.float(), n[0])
            print(f"smoke: {impl}: {1e3 * (time.perf_counter() - t0):.0f} ms (compilation "
                  f"included), persistent launch rounds {n[0]}", flush=True)
    finally:
        if saved is None:
            os.environ.pop(RECURRENCE.var, None)
        else:
            os.environ[RECURRENCE.var] = saved
    (y_s, dx_s, _), (y_p, dx_p, launches) = got["step"], got["persistent"]
    finite = bool(torch.isfinite(y_p).all() and torch.isfinite(dx_p).all())
    print(f"smoke: max |y persistent - y step| {(y_p - y_s).abs().max().item():.3g}, "
          f"max |dx persistent - dx step| {(dx_p - dx_s).abs().max().item():.3g}, "
          f"finite {finite}", flush=True)
    if launches == 0 or not finite:
        print("smoke: FAILED (" + ("no persistent launch" if launches == 0 else "non-finite")
              + ")")
        return 1
    print("smoke: ok")
    return 0


# -------------------------------------------------------------------------------------- main
def _dry_meta():
    import platform

    import torch

    from bench.sweeps import _commit
    return dict(gpu=f"cpu dry run ({platform.machine()})", torch=torch.__version__,
                commit=_commit(), date=time.strftime("%Y-%m-%d"), I_equals_H=True, dry_run=True,
                note="DRY RUN on CPU through the Triton interpreter at tiny shapes: the timings "
                     "mean nothing")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="the sweep's JSON rows (required but with --smoke)")
    ap.add_argument("--budget-s", type=float, default=150.0, help="no new shape after this")
    ap.add_argument("--table", help="write the dispatch table here (default: none)")
    ap.add_argument("--dry-run", action="store_true",
                    help="on CPU through the interpreter at tiny shapes: the plumbing only")
    ap.add_argument("--smoke", action="store_true",
                    help="one forced-persistent fwd+bwd against the step chain, then exit")
    args = ap.parse_args(argv)
    if not args.out and not args.smoke:
        ap.error("--out is required")
    if args.dry_run:
        if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            print("persistent_sweep: --dry-run needs TRITON_INTERPRET=1 before triton is "
                  "imported (the kernels are bound to the interpreter when defined)")
            return 2
        os.environ["TRITON_INTERPRET"] = "1"      # before triton is imported
    import torch
    if not args.dry_run and not torch.cuda.is_available():
        print("persistent_sweep: needs a CUDA GPU (Triton timings on CPU mean nothing); "
              "--dry-run checks the plumbing on CPU")
        return 0
    import fastcells  # noqa: F401  - imported after TRITON_INTERPRET is set
    from bench.sweeps import compare, sweep_meta
    from fastcells.kernels.config import RECURRENCE
    device = torch.device("cpu" if args.dry_run else "cuda")
    if args.smoke:
        return smoke(device, args.dry_run)
    import triton
    meta = _dry_meta() if args.dry_run else sweep_meta(
        sweep="persistent", triton=triton.__version__,
        sms=torch.cuda.get_device_properties(0).multi_processor_count,
        float32_matmul_precision=torch.get_float32_matmul_precision())
    if args.dry_run:
        print("DRY RUN: CPU, Triton interpreter, shapes scaled to T<=3 B<=2 H<=16; the timings "
              "mean nothing", flush=True)
    t0 = time.time()          # the budget counts planning too (a plan may compile a kernel)
    shapes = sweep_plan()
    if args.dry_run:
        shapes = list(dict.fromkeys(dry_shape(s) for s in shapes))
    plans = {}

    def plan_of(s):
        if s not in plans:
            plans[s] = persistent_plan(s, device)
        return plans[s]
    if not args.dry_run:
        shapes = order_grid(shapes, lambda s: isinstance(plan_of(s), dict))
    rows, done = [], set()
    saved_recurrence = os.environ.get(RECURRENCE.var)
    print(f"{'shape':42} {'pass':8} {'persist':>9} {'step':>9} {'cudnn':>9} {'pers/step':>9} "
          f"{'pers/cudnn':>10}  ran", flush=True)
    try:
        for s in shapes:
            if time.time() - t0 > args.budget_s:
                meta["cut"] = f"budget {args.budget_s:.0f} s reached"
                meta["not_timed"] = [x.label() for x in shapes if x not in done]
                break
            plan = plan_of(s)
            extra = {}
            impls = IMPLS if isinstance(plan, dict) else ("step", "cudnn")
            passes = compare(impls, lambda impl: measure(s, impl, device, extra))
            if "persistent" not in impls:   # not eligible: the forced path is the step chain
                why = plan if isinstance(plan, str) else "not eligible (plan is None)"
                for p in PASSES:
                    ms, errors, med = passes[p]
                    ms["persistent"], med["persistent"] = None, float("nan")
                    errors["persistent"] = why
            row = sweep_row(s, passes, extra, plan, args.dry_run)
            if not isinstance(plan, dict):
                row["persistent_ran"], row["persistent_launches"] = False, 0
            rows.append(row)
            done.add(s)
            for p in PASSES:
                med = passes[p][2]
                print(f"{s.label():42} {p:8} {med['persistent']:9.3f} {med['step']:9.3f} "
                      f"{med['cudnn']:9.3f} {med['persistent'] / med['step']:9.2f} "
                      f"{med['persistent'] / med['cudnn']:10.2f}  {row['persistent_ran']}",
                      flush=True)
            with open(args.out, "w") as f:
                json.dump(dict(meta=meta, rows=rows), f, indent=1)
    finally:
        if saved_recurrence is None:
            os.environ.pop(RECURRENCE.var, None)
        else:
            os.environ[RECURRENCE.var] = saved_recurrence
    with open(args.out, "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    print(f"{len(rows)} rows in {time.time() - t0:.0f} s -> {args.out}", flush=True)
    if meta.get("cut"):
        print(f"cut: {meta['cut']}; not timed: {', '.join(meta['not_timed'])}", flush=True)
    if args.table:
        table = write_table(args.table, dict(meta=meta, rows=rows), args.out)
        n = sum(r["choice"] == "persistent" for r in table["rows"])
        print(f"dispatch table: {n} of {len(table['rows'])} rows choose persistent -> "
              f"{args.table}", flush=True)
    if args.dry_run:
        print("DRY RUN: the figures below come from CPU timings at tiny shapes and mean nothing")
    print(format_targets(targets(rows, dry_shape if args.dry_run else None)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
