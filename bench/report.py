"""The markdown table, the PNG plots and the short printed summary, all drawn from the rows of
one JSON results file (never typed by hand).

    python bench/report.py bench/results/<date>_<device>_quick.json [--summary]

writes <stem>.md, <stem>_ratio.png, <stem>_floor.png and <stem>_clip.png beside the JSON
(``--out DIR`` elsewhere); ``--summary`` also prints the short table that gpu_check.sh ends with.

Every ratio is fastcells' time over the other one's (``CONVENTION``): below 1.00 fastcells is
faster.  Rows are published only when they record the clean commit that was measured: rows of a
tree with uncommitted changes (``<hash>-dirty``) or of an unknown commit make the report refuse
(``Unpublishable``), unless ``--allow-dirty REASON`` says what code they measured; the table
and plots then carry that reason under a "not publishable" banner.
"""
import argparse
import json
import re
import sys
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Callable, NamedTuple, Optional

IMPL_ORDER = ("fastcells", "native", "cell_loop", "reference", "reference_compiled",
              "torch_foreach", "torch_loop")
PASS_ORDER = ("fwd", "bwd", "fwd+bwd", "clip")
OP_ORDER = ("lstm", "gru", "rnn", "lstm_cell", "gru_cell", "rnn_cell", "clip")
DTYPE_ORDER = ("fp32", "bf16", "fp16")
SUBJECT = "fastcells"
BASELINE = "native"
CONVENTION = ("Ratios are fastcells time / baseline time: below 1.00 fastcells is faster, above "
              "1.00 it is slower (x floor: fastcells time / the hardware floor).")


def load(path):
    """(meta, rows) of a results file ({"meta", "rows"}, or a bare list of rows), as stored: the
    rows are the JSON objects bench/run.py writes (every function here also takes those)."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if isinstance(data, list):
        return {}, data
    return data.get("meta", {}), data["rows"]


class Row(NamedTuple):
    """The fields of one JSON row (bench/run.py's SCHEMA) that the report reads."""

    op: str
    case: str
    dtype: str
    impl: str
    pass_: str
    shape: dict
    ms: Optional[float]
    host_ms: Optional[float]
    floor_ms: Optional[float]
    floor_ratio: Optional[float]
    gb_s: Optional[float]
    peak_mem_mb: Optional[float]
    error: Optional[str]

    @classmethod
    def from_json(cls, row):
        """A Row of a JSON row (a Row passes through)."""
        if isinstance(row, cls):
            return row
        return cls(**{f: row.get("pass" if f == "pass_" else f) for f in cls._fields})

    def label(self):
        return f"{self.op} {self.case} {self.dtype} {self.impl} {self.pass_}"


class Comparison(NamedTuple):
    """The rows of one comparison: the same op, case, dtype and pass, one row per impl."""

    op: str
    case: str
    dtype: str
    pass_: str
    rows: dict          # impl -> Row

    def get(self, impl):
        return self.rows.get(impl)

    def ratio(self, baseline):
        """fastcells' time over ``baseline``'s (an impl; below 1: fastcells is faster), or None."""
        return ratio(self.get(SUBJECT), self.get(baseline))


def _index(seq, value):
    return seq.index(value) if value in seq else len(seq)


def _order(keys, table):
    return sorted(keys, key=lambda k: _index(table, k))


def group(rows):
    """([Comparison] in report order, the impls present) of JSON rows or Rows."""
    case_order = {}
    groups = defaultdict(dict)
    for r in map(Row.from_json, rows):
        case_order.setdefault((r.op, r.case), len(case_order))
        groups[(r.op, r.case, r.dtype, r.pass_)][r.impl] = r
    keys = sorted(groups, key=lambda k: (_index(OP_ORDER, k[0]), case_order[k[:2]],
                                         _index(DTYPE_ORDER, k[2]), _index(PASS_ORDER, k[3])))
    impls = _order({i for g in groups.values() for i in g}, IMPL_ORDER)
    return [Comparison(*k, groups[k]) for k in keys], impls


def _errors(rows):
    return [r for r in map(Row.from_json, rows) if r.error]


def _ok(row):
    return row is not None and row.ms is not None


def ratio(subject, baseline):
    """subject ms / baseline ms (below 1: the subject is faster), or None."""
    if _ok(subject) and _ok(baseline) and baseline.ms > 0:
        return subject.ms / baseline.ms
    return None


# ------------------------------------------------------------------------------ publishing
_CLEAN_COMMIT = re.compile(r"[0-9a-f]{7,40}")


class Unpublishable(ValueError):
    """The rows record no clean commit, and no reason to draw them anyway was given."""


def commits(meta, rows):
    """The commits recorded by the rows (and the file's meta), sorted; None as 'unknown'."""
    found = {str(r.get("commit") or "unknown") for r in rows}
    if meta.get("commit") or not found:
        found.add(str(meta.get("commit") or "unknown"))
    return sorted(found)


def commit_problem(meta, rows):
    """Why these rows cannot be published as results (a sentence), or None when every row and
    the meta record one and the same clean commit."""
    recorded = commits(meta, rows)
    bad = [c for c in recorded if not _CLEAN_COMMIT.fullmatch(c)]
    if not bad:
        return None
    why = []
    if any(c.endswith("-dirty") for c in bad):
        why.append("a tree with uncommitted changes (`-dirty`), so no commit names the code "
                   "measured")
    if any(not c.endswith("-dirty") for c in bad):
        why.append("no commit (`unknown`: a copied tree without `.git`; set FASTCELLS_COMMIT "
                   "for such a run)")
    return (f"the rows record commit {', '.join(f'`{c}`' for c in recorded)}: "
            + "; ".join(why))


def publish_check(meta, rows, allow_dirty=None):
    """None for rows that may be published; for others the banner text (a reason was given in
    ``allow_dirty``), else ``Unpublishable``."""
    problem = commit_problem(meta, rows)
    if problem is None:
        return None
    if not allow_dirty:
        raise Unpublishable(
            f"not publishable as results: {problem}. Measure on a clean checkout, or pass "
            "--allow-dirty REASON (what code the rows measured) to draw them anyway, marked as "
            "not publishable")
    return f"**Not publishable as results**: {problem}. Drawn anyway because: {allow_dirty}"


def _f(value, fmt="{:.3f}", none="—"):
    return none if value is None else fmt.format(value)


def _cell_ms(row):
    if row is None:
        return ""
    if row.error:
        return "error"
    return _f(row.ms, "{:.4g}")


# ----------------------------------------------------------------------------------- tables
class Column(NamedTuple):
    """A table column: its title, and its text for a (Comparison, Row) item."""

    title: str
    text: Callable
    left: bool = False      # left-aligned in the plain-text table


def table(columns, items, markdown=True):
    """The lines of a table of ``items`` ((Comparison, Row) pairs): markdown, or plain text with
    aligned columns.  Every table of the report goes through here."""
    head = [c.title for c in columns]
    body = [[c.text(g, r) for c in columns] for g, r in items]
    if markdown:
        return (["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                + ["| " + " | ".join(cells) + " |" for cells in body])
    widths = [max(len(cells[i]) for cells in [head] + body) for i in range(len(head))]
    return ["  ".join(v.ljust(w) if c.left else v.rjust(w)
                      for c, v, w in zip(columns, cells, widths)) for cells in [head] + body]


def _key(*names, title=None):
    """Columns naming the comparison: 'op', 'case', 'dtype', 'pass' (its field), or 'impl'."""
    attr = {"pass": "pass_"}
    return [Column(title or n, (lambda g, r: r.impl) if n == "impl" else
                   (lambda g, r, a=attr.get(n, n): getattr(g, a)), left=True) for n in names]


def _field(title, name, fmt, none="—"):
    """A column of the item's row: ``fmt`` of its field ``name``."""
    return Column(title, lambda g, r: _f(getattr(r, name, None), fmt, none))


def _vs(bases):
    """fastcells' time over each of ``bases``' ('x native': below 1, fastcells is faster)."""
    return [Column(f"x {b}", lambda g, r, b=b: _f(g.ratio(b), "{:.2f}", "")) for b in bases]


MS = Column("ms", lambda g, r: _cell_ms(r))
FLOOR_MS = _field("floor ms", "floor_ms", "{:.4g}")
X_FLOOR = _field("x floor", "floor_ratio", "{:.1f}")
GB_S = _field("GB/s", "gb_s", "{:.0f}")
PEAK = _field("peak MiB", "peak_mem_mb", "{:.0f}")


def _subject_items(comparisons):
    return [(g, g.get(SUBJECT)) for g in comparisons if g.get(SUBJECT) is not None]


def _bases(comparisons, impls):
    """The impls other than fastcells with a row in ``comparisons``."""
    return [i for i in impls if i != SUBJECT and any(i in g.rows for g in comparisons)]


# --------------------------------------------------------------------------------- markdown
def markdown(meta, rows, allow_dirty=None):
    """The markdown report of a results file; ``Unpublishable`` for rows without a clean commit
    unless ``allow_dirty`` gives the reason to draw them (shown in a banner)."""
    banner = publish_check(meta, rows, allow_dirty)
    comparisons, impls = group(rows)
    out = [f"# fastcells benchmarks: {meta.get('device', '?')}, {meta.get('date', '?')}", ""]
    if banner:
        out += [f"> {banner}", ""]
    out += [CONVENTION, ""]
    hw = meta.get("hardware") or {}
    out.append(f"torch {meta.get('torch')}, triton {meta.get('triton')}, CUDA {meta.get('cuda')}, "
               f"cuDNN {meta.get('cudnn')}; commit `{meta.get('commit')}`; plan `{meta.get('mode')}`; "
               f"timer `{meta.get('timer')}` (median of the calls; p20/p80 in the JSON).")
    if hw:
        rates = ", ".join(f"{k} {v:.3g}" for k, v in hw.get("matmul_tflop_s", {}).items())
        out.append(f"Measured floors: copy {hw.get('copy_gb_s', 0):.3g} GB/s; matmul TFLOP/s "
                   f"{rates} (fp32 TF32: {meta.get('tf32_matmul')}).")
        if hw.get("step_us") is not None:
            out.append(f"Sequential bound: {hw['step_us']:.3g} us per dependent step "
                       f"({hw.get('step_note')}; a launch in a graphed chain: "
                       f"{hw.get('launch_step_us', 0):.3g} us).")
        elif "step_note" in hw:
            out.append(f"Sequential bound: {hw['step_note']}.")
    out.append("")
    for note in meta.get("notes") or []:
        out += [f"> {note}", ""]
    if meta.get("aborted"):
        out += [f"> Run aborted: {meta['aborted']}", ""]
    out += ["Implementations: `fastcells` the fused Triton kernels; `native` torch.nn's module "
            "(layers: cuDNN on CUDA; cells: ATen's fused cell); `cell_loop` a Python loop over "
            "torch.nn cells; `reference` fastcells' plain-PyTorch path; `reference_compiled` its "
            "cell under torch.compile; `torch_foreach` / `torch_loop` "
            "torch.nn.utils.clip_grad_norm_ with foreach=True / False.", ""]
    net = [g for g in comparisons if g.op != "clip"]
    clip = [g for g in comparisons if g.op == "clip"]
    if _subject_items(net):
        out += ["## fastcells against the baselines", "",
                "x native = fastcells ms / native ms (below 1: fastcells is faster); "
                "x floor = fastcells ms / floor ms.", ""]
        out += table(_key("op", "case", "dtype", "pass") + [
            MS._replace(title="fastcells ms"), FLOOR_MS, X_FLOOR] + _vs(_bases(net, impls))
            + [PEAK], _subject_items(net)) + [""]
    if clip:
        vs_col = SUBJECT in impls
        vs = Column("fastcells / this", lambda g, r: "" if r.impl == SUBJECT else
                    _f(ratio(g.get(SUBJECT), r), "{:.2f}", ""))
        out += ["## Clip-by-global-norm", "",
                ("Device time (do_bench) and host time (the Python call, not synchronised) per "
                 "call; " if meta.get("timer") == "do_bench" else
                 "Wall time per call (on CPU the call does the work: host = device); ")
                + "GB/s = the bytes a clip must move (read twice, write once) / device time.", ""]
        out += table(_key("case", "dtype", "impl") + [
            MS._replace(title="device ms"), _field("host ms", "host_ms", "{:.4g}"), GB_S,
            X_FLOOR] + [vs] * vs_col + [PEAK],
            [(g, g.rows[i]) for g in clip for i in _order(g.rows, impls)]) + [""]
    if net:
        present = [i for i in impls if any(i in g.rows for g in net)]
        shape = Column("shape", lambda g, r: " ".join(f"{k}={v}" for k, v in r.shape.items()))
        out += ["## Every layer and cell row (median ms)", ""]
        out += table(_key("op", "case") + [shape] + _key("dtype", "pass") + [FLOOR_MS] + [
            Column(i, lambda g, r, i=i: _cell_ms(g.get(i))) for i in present],
            [(g, next(iter(g.rows.values()))) for g in net]) + [""]
    errors = _errors(rows)
    if errors:
        out += ["## Errors", ""]
        out += [f"- {r.label()}: `{r.error}`" for r in errors] + [""]
    skipped = meta.get("skipped") or []
    if skipped:
        out += ["## Not timed", ""]
        by_reason = defaultdict(list)
        for s in skipped:
            by_reason[s["reason"]].append(f"{s['op']}/{s['case']}/{s['dtype']}/{s['impl']}")
        for reason, what in by_reason.items():
            shown = ", ".join(what[:12]) + (f" and {len(what) - 12} more" if len(what) > 12 else "")
            out.append(f"- {reason}: {shown}")
        out.append("")
    return "\n".join(out)


# ------------------------------------------------------------------------------------ plots
def plots(meta, rows, stem, allow_dirty=None):
    """Draw the PNGs (when matplotlib is there); returns the paths written.

    ``_ratio.png``: fastcells' time over native's (cuDNN for layers, ATen's cell for cells; below
    1: fastcells is faster) per op and pass, one bar per shape and dtype.  ``_floor.png``: every
    implementation's time over the floor, fwd+bwd, per op and dtype.  ``_clip.png``: clip device
    and host time.  Rows without a clean commit as in ``markdown``: refused, or titled as not
    publishable."""
    banner = publish_check(meta, rows, allow_dirty)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    comparisons, impls = group(rows)
    net = [g for g in comparisons if g.op != "clip"]
    clip = [g for g in comparisons if g.op == "clip"]
    where = f"{meta.get('device', '?')}, {str(meta.get('date', '?'))[:10]}"
    if banner:
        where += " — not publishable: the rows record no clean commit (see the .md)"
    written = []
    if any(g.ratio(BASELINE) for g in net):
        base = "cuDNN / ATen cell" if meta.get("timer") == "do_bench" else "torch"
        path = Path(f"{stem}_ratio.png")
        _grid(plt, net, "pass_", "dtype", lambda g: g.ratio(BASELINE),
              f"fastcells time / {BASELINE} time ({base}); below 1: fastcells is faster — {where}",
              path, labels=True, ylabel=f"fastcells / {BASELINE}")
        written.append(path)
    training = [g for g in net if g.pass_ == "fwd+bwd"]
    if training:
        path = Path(f"{stem}_floor.png")
        _grid(plt, training, "dtype", "impl", lambda r: r.floor_ratio if _ok(r) else None,
              f"fwd+bwd time / hardware floor (1: at the floor) — {where}", path,
              ylabel="time / floor")
        written.append(path)
    if clip:
        path = Path(f"{stem}_clip.png")
        _clip_plot(plt, clip, impls, f"clip_grad_norm_ — {where}", path)
        written.append(path)
    return written


def _bars(ax, labels, series, ylabel, from_one=False, value_labels=False):
    """Grouped bars: ``series`` {name: [value or None per label]}, log scale; ``from_one`` draws
    ratios as bars up or down from 1.  Implementations keep one colour in every plot."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator
    n = max(len(series), 1)
    width = 0.8 / n
    values = []
    for j, (name, vals) in enumerate(series.items()):
        pts = [(i + (j - (n - 1) / 2) * width, v) for i, v in enumerate(vals) if v]
        xs, vs = [p[0] for p in pts], [p[1] for p in pts]
        values += vs
        color = f"C{_index(IMPL_ORDER, name) % 10}" if name in IMPL_ORDER else None
        if from_one:
            bars = ax.bar(xs, [v - 1 for v in vs], width, bottom=1, label=name, color=color)
        else:
            bars = ax.bar(xs, vs, width, label=name, color=color)
        if value_labels:
            for bar, v in zip(bars, vs):
                ax.annotate(f"{v:.2g}", (bar.get_x() + bar.get_width() / 2, v), fontsize=6,
                            ha="center", va="bottom" if v >= 1 else "top")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=7, rotation=30, ha="right")
    ax.set_yscale("log")
    if values:
        span = values + ([1.0] if from_one else [])
        lo, hi = min(span), max(span)
        ax.set_ylim(lo / 1.6, hi * 1.6)
    # Labelled ticks at 1, 2, 5 x 10^k and no minor ticks (which also keeps drawing fast).
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.tick_params(axis="y", labelsize=7)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    if from_one:
        ax.axhline(1.0, color="black", linewidth=0.8)
    if series:
        ax.legend(fontsize=6)


def _grid(plt, comparisons, col_by, bar_by, value, title, path, labels=False, ylabel="ratio"):
    """Subplots: a row per op, a column per ``col_by`` ('pass_' or 'dtype'); in each, x = case
    and one bar per ``bar_by`` ('dtype': value(Comparison), or 'impl': value(Row))."""
    ops = _order({g.op for g in comparisons}, OP_ORDER)
    cols = _order({getattr(g, col_by) for g in comparisons},
                  PASS_ORDER if col_by == "pass_" else DTYPE_ORDER)
    if bar_by == "dtype":
        names = _order({g.dtype for g in comparisons}, DTYPE_ORDER)
    else:
        names = _order({i for g in comparisons for i in g.rows}, IMPL_ORDER)
    n_cases = max(len({g.case for g in comparisons if g.op == op}) for op in ops)
    width = max(4.0, 1.2 + 0.16 * n_cases * len(names))
    fig, axes = plt.subplots(len(ops), len(cols), squeeze=False,
                             figsize=(max(6.0, width * len(cols)), 3.0 * len(ops)))
    for r, op in enumerate(ops):
        for c, col in enumerate(cols):
            here = [g for g in comparisons if g.op == op and getattr(g, col_by) == col]
            cases = list(dict.fromkeys(g.case for g in here))
            series = {}
            for name in names:
                vals = []
                for case in cases:
                    if bar_by == "dtype":
                        g = next((g for g in here if g.case == case and g.dtype == name), None)
                        vals.append(value(g) if g else None)
                    else:
                        g = next((g for g in here if g.case == case), None)
                        vals.append(value(g.rows[name]) if g and name in g.rows else None)
                if any(vals):
                    series[name] = vals
            _bars(axes[r][c], cases, series, ylabel, from_one=True, value_labels=labels)
            axes[r][c].set_title(f"{op} {col}", fontsize=9)
    _title(fig, title)
    fig.tight_layout(rect=(0, 0, 1, 0.96 if len(ops) > 1 else 0.88))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _title(fig, title):
    """The figure's title, wrapped to its width (about 12 characters an inch at this size)."""
    fig.suptitle(textwrap.fill(title, int(fig.get_figwidth() * 12)), fontsize=10)


def _clip_plot(plt, comparisons, impls, title, path):
    labels = [f"{g.case} {g.dtype}" for g in comparisons]
    fig, axes = plt.subplots(1, 2, figsize=(max(5.0, 1.2 * len(comparisons)) * 2, 3.6))
    for ax, field, name in ((axes[0], "ms", "device ms per call"),
                            (axes[1], "host_ms", "host ms per call")):
        series = {i: [getattr(g.rows[i], field) if i in g.rows else None for g in comparisons]
                  for i in impls}
        series = {i: v for i, v in series.items() if any(v)}
        _bars(ax, labels, series, name)
        ax.set_title(name, fontsize=9)
    _title(fig, title)
    fig.tight_layout(rect=(0, 0, 1, 0.88))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------- summary
def summary(meta, rows, max_errors=10):
    """A short text table: every comparison's median ms per impl and fastcells' time over
    native's, then the errors and what was not timed.  A look, not a publication: rows without
    a clean commit are shown, under a line that says so."""
    comparisons, impls = group(rows)

    def ms_host(impl):   # median ms, and the host time where it differs (clip)
        def text(g, _):
            r = g.get(impl)
            host = (f"/{r.host_ms:.3g}h" if _ok(r) and r.host_ms is not None and r.host_ms != r.ms
                    else "")
            return _cell_ms(r) + host
        return Column(impl, text)

    columns = _key("op", "case", "dtype", "pass") + [ms_host(i) for i in impls]
    if SUBJECT in impls and BASELINE in impls:
        columns += [Column("fc/native", lambda g, r: _f(g.ratio(BASELINE), "{:.2f}", "")),
                    _field("fc xfloor", "floor_ratio", "{:.1f}", "")]
    text = [f"fastcells benchmark ({meta.get('mode')}): {meta.get('device')}, {meta.get('date')}, "
            f"torch {meta.get('torch')}, triton {meta.get('triton')}, commit {meta.get('commit')}",
            "median ms per call (clip: device/host 'h'); fc/native = fastcells time / native "
            "time (below 1: fastcells is faster)"]
    problem = commit_problem(meta, rows)
    if problem:
        text.insert(1, f"NOT PUBLISHABLE: {problem}")
    text += table(columns, [(g, g.get(SUBJECT)) for g in comparisons], markdown=False)
    errors = _errors(rows)
    if errors:
        text.append(f"{len(errors)} errors:")
        text += [f"  {r.label()}: {r.error}" for r in errors[:max_errors]]
        if len(errors) > max_errors:
            text.append(f"  ... and {len(errors) - max_errors} more (see the JSON)")
    skipped = meta.get("skipped") or []
    if skipped:
        reasons = defaultdict(int)
        for s in skipped:
            reasons[s["reason"]] += 1
        text += [f"not timed ({n}): {reason}" for reason, n in reasons.items()]
    if meta.get("aborted"):
        text.append(f"ABORTED: {meta['aborted']}")
    return "\n".join(text)


def newest_gpu_result(results_dir):
    """The newest results file in ``results_dir`` measured on a GPU (timer do_bench), or None."""
    found = []
    for path in Path(results_dir).glob("*.json"):
        try:
            meta, rows = load(path)
        except (OSError, ValueError, KeyError):
            continue
        if meta.get("timer") == "do_bench" and rows:
            found.append((meta.get("date", ""), path))
    return max(found)[1] if found else None


def readme_section(json_path, link_base="bench/results", passes=("fwd", "fwd+bwd"),
                   allow_dirty=None):
    """A results section for the top-level README, built from one GPU results file: fastcells'
    time over each baseline's and over the floor (``passes`` of the layers and cells; every
    clip row), naming the GPU and date.  Rows without a clean commit as in ``markdown``."""
    meta, rows = load(json_path)
    banner = publish_check(meta, rows, allow_dirty)
    comparisons, impls = group(rows)
    name = Path(json_path).stem
    out = [f"> {banner}", ""] if banner else []
    out += [f"Measured on {meta.get('device')}, {str(meta.get('date'))[:10]} (torch "
            f"{meta.get('torch')}, triton {meta.get('triton')}, plan `{meta.get('mode')}`): rows "
            f"in [`{name}.json`]({link_base}/{name}.json), every pass in "
            f"[`{name}.md`]({link_base}/{name}.md), plots `{name}_*.png`. " + CONVENTION, ""]
    timed = [g for g in comparisons if _ok(g.get(SUBJECT))]
    net = [g for g in timed if g.op != "clip" and g.pass_ in passes]
    if net:
        out += table(_key("op", "case", "dtype", "pass") + [MS._replace(title="fastcells ms"),
                     X_FLOOR] + _vs(_bases(net, impls)), _subject_items(net)) + [""]
    clip = [g for g in timed if g.op == "clip"]
    if clip:
        def vs(b):   # fastcells' device and host time over b's
            def text(g, s):
                r = g.get(b)
                host = (s.host_ms / r.host_ms if _ok(r) and r.host_ms and s.host_ms else None)
                return f"{_f(ratio(s, r), '{:.2f}', '')} / {_f(host, '{:.2f}', '')}"
            return Column(f"x {b} (device / host)", text)

        out += table(_key("case", title="clip") + _key("dtype") + [
            MS._replace(title="fastcells device ms"), _field("host ms", "host_ms", "{:.3g}"),
            GB_S] + [vs(b) for b in _bases(clip, impls)], _subject_items(clip)) + [""]
    return "\n".join(out)


def write(json_path, out_dir=None, allow_dirty=None):
    """Write the markdown table and the plots of ``json_path``; returns the paths written.
    Rows without a clean commit raise ``Unpublishable`` before anything is written, unless
    ``allow_dirty`` gives the reason to draw them (see ``markdown``)."""
    json_path = Path(json_path)
    meta, rows = load(json_path)
    publish_check(meta, rows, allow_dirty)
    stem = (Path(out_dir) if out_dir else json_path.parent) / json_path.stem
    stem.parent.mkdir(parents=True, exist_ok=True)
    md = Path(f"{stem}.md")
    md.write_text(markdown(meta, rows, allow_dirty) + "\n", encoding="utf-8")
    return [md] + plots(meta, rows, stem, allow_dirty)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python bench/report.py", description=__doc__.split("\n\n")[0])
    p.add_argument("json", help="a results file written by bench/run.py (with --readme: a "
                   "folder, whose newest GPU result is used)")
    p.add_argument("--out", help="folder for the table and plots (default: beside the JSON)")
    p.add_argument("--summary", action="store_true", help="print the short summary table")
    p.add_argument("--no-write", action="store_true", help="write no table or plots")
    p.add_argument("--readme", action="store_true",
                   help="print the README's results section, built from the newest GPU result")
    p.add_argument("--allow-dirty", metavar="REASON",
                   help="draw rows that record no clean commit (a -dirty or unknown one) anyway, "
                   "under a 'not publishable' banner giving REASON (say what code they measured)")
    args = p.parse_args(argv)
    try:
        if args.readme:
            path = Path(args.json)
            if path.is_dir():
                path = newest_gpu_result(path)
                if path is None:
                    print(f"no GPU results in {args.json}", file=sys.stderr)
                    return 1
            print(readme_section(path, allow_dirty=args.allow_dirty))
            return 0
        if not args.no_write:
            for path in write(args.json, args.out, args.allow_dirty):
                print(f"wrote {path}")
    except Unpublishable as e:
        print(f"{args.json}: {e}", file=sys.stderr)
        return 2
    if args.summary:
        meta, rows = load(args.json)
        print(summary(meta, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
