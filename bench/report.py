"""The markdown table, the PNG plots and the short printed summary, all drawn from the rows of
one JSON results file (never typed by hand).

    python bench/report.py bench/results/2026-11-26_NVIDIA-H100-80GB-HBM3_quick.json [--summary]

writes <stem>.md, <stem>_speedup.png, <stem>_floor.png and <stem>_clip.png beside the JSON
(``--out DIR`` elsewhere); ``--summary`` also prints the short table that gpu_check.sh ends with.
"""
import argparse
import json
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

IMPL_ORDER = ("fastcells", "native", "cell_loop", "reference", "reference_compiled",
              "torch_foreach", "torch_loop")
PASS_ORDER = ("fwd", "bwd", "fwd+bwd", "clip")
OP_ORDER = ("lstm", "gru", "rnn", "lstm_cell", "gru_cell", "rnn_cell", "clip")
DTYPE_ORDER = ("fp32", "bf16", "fp16")
SUBJECT = "fastcells"
BASELINE = "native"


def load(path):
    """(meta, rows) of a results file ({"meta", "rows"}, or a bare list of rows)."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if isinstance(data, list):
        return {}, data
    return data.get("meta", {}), data["rows"]


def _index(seq, value):
    return seq.index(value) if value in seq else len(seq)


def _order(keys, table):
    return sorted(keys, key=lambda k: _index(table, k))


def _case_key(row):
    """Rows of one comparison: same op, case, dtype and pass."""
    return (row["op"], row["case"], row["dtype"], row["pass"])


def _sort_key(key, case_order):
    op, case, dtype, pass_ = key
    return (_index(OP_ORDER, op), case_order.get((op, case), 0), _index(DTYPE_ORDER, dtype),
            _index(PASS_ORDER, pass_))


def group(rows):
    """{(op, case, dtype, pass): {impl: row}} in report order, and the impls present."""
    case_order = {}
    groups = defaultdict(dict)
    for r in rows:
        case_order.setdefault((r["op"], r["case"]), len(case_order))
        groups[_case_key(r)][r["impl"]] = r
    keys = sorted(groups, key=lambda k: _sort_key(k, case_order))
    impls = _order({r["impl"] for r in rows}, IMPL_ORDER)
    return {k: groups[k] for k in keys}, impls


def _ok(row):
    return row is not None and row.get("ms") is not None


def speedup(baseline, subject):
    """baseline ms / subject ms (above 1: the subject is faster), or None."""
    if _ok(baseline) and _ok(subject) and subject["ms"] > 0:
        return baseline["ms"] / subject["ms"]
    return None


def _f(value, fmt="{:.3f}", none="—"):
    return none if value is None else fmt.format(value)


def _cell_ms(row):
    if row is None:
        return ""
    if row.get("error"):
        return "error"
    return _f(row["ms"], "{:.4g}")


# --------------------------------------------------------------------------------- markdown
def markdown(meta, rows):
    groups, impls = group(rows)
    out = [f"# fastcells benchmarks: {meta.get('device', '?')}, {meta.get('date', '?')}", ""]
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
    net = {k: g for k, g in groups.items() if k[0] != "clip"}
    clip = {k: g for k, g in groups.items() if k[0] == "clip"}
    if any(SUBJECT in g for g in net.values()):
        out += _vs_table(net, impls)
    if clip:
        out += _clip_table(clip, impls, meta.get("timer") == "do_bench")
    if net:
        out += _ms_table(net, impls)
    errors = [r for r in rows if r.get("error")]
    if errors:
        out += ["## Errors", ""]
        out += [f"- {r['op']} {r['case']} {r['dtype']} {r['impl']} {r['pass']}: `{r['error']}`"
                for r in errors] + [""]
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


def _vs_table(groups, impls):
    bases = [i for i in impls if i != SUBJECT and any(i in g for g in groups.values())]
    out = ["## fastcells against the baselines", "",
           "Speed-up = baseline ms / fastcells ms (above 1: fastcells is faster); "
           "x floor = fastcells ms / floor ms.", "",
           "| op | case | dtype | pass | fastcells ms | floor ms | x floor | "
           + " | ".join(f"vs {b}" for b in bases) + " | peak MiB |",
           "|" + "---|" * (8 + len(bases))]
    for (op, case, dtype, pass_), g in groups.items():
        s = g.get(SUBJECT)
        if s is None:
            continue
        vs = [_f(speedup(g.get(b), s), "{:.2f}x", "") for b in bases]
        out.append(f"| {op} | {case} | {dtype} | {pass_} | {_cell_ms(s)} | {_f(s['floor_ms'], '{:.4g}')} "
                   f"| {_f(s.get('floor_ratio'), '{:.1f}')} | " + " | ".join(vs)
                   + f" | {_f(s.get('peak_mem_mb'), '{:.0f}')} |")
    return out + [""]


def _clip_table(groups, impls, cuda):
    vs_col = SUBJECT in impls
    out = ["## Clip-by-global-norm", "",
           ("Device time (do_bench) and host time (the Python call, not synchronised) per call; "
            if cuda else "Wall time per call (on CPU the call does the work: host = device); ")
           + "GB/s = the bytes a clip must move (read twice, write once) / device time.", "",
           "| case | dtype | impl | device ms | host ms | GB/s | x floor | "
           + ("vs fastcells | " if vs_col else "") + "peak MiB |",
           "|" + "---|" * (8 + vs_col)]
    for (_, case, dtype, _), g in groups.items():
        for impl in _order(g, impls):
            r = g[impl]
            vs = ""
            if vs_col:
                vs = " | " + ("" if impl == SUBJECT else
                              _f(speedup(r, g.get(SUBJECT)), "{:.2f}x", ""))
            out.append(f"| {case} | {dtype} | {impl} | {_cell_ms(r)} | {_f(r.get('host_ms'), '{:.4g}')} "
                       f"| {_f(r.get('gb_s'), '{:.0f}')} | {_f(r.get('floor_ratio'), '{:.1f}')}{vs} "
                       f"| {_f(r.get('peak_mem_mb'), '{:.0f}')} |")
    return out + [""]


def _ms_table(groups, impls):
    present = [i for i in impls if any(i in g for g in groups.values())]
    out = ["## Every layer and cell row (median ms)", "",
           "| op | case | shape | dtype | pass | floor ms | " + " | ".join(present) + " |",
           "|" + "---|" * (6 + len(present))]
    for (op, case, dtype, pass_), g in groups.items():
        any_row = next(iter(g.values()))
        shape = " ".join(f"{k}={v}" for k, v in any_row["shape"].items())
        out.append(f"| {op} | {case} | {shape} | {dtype} | {pass_} | "
                   f"{_f(any_row['floor_ms'], '{:.4g}')} | "
                   + " | ".join(_cell_ms(g.get(i)) for i in present) + " |")
    return out + [""]


# ------------------------------------------------------------------------------------ plots
def plots(meta, rows, stem):
    """Draw the PNGs (when matplotlib is there); returns the paths written.

    ``_speedup.png``: fastcells' speed-up over native (cuDNN for layers, ATen's cell for cells)
    per op and pass, one bar per shape and dtype.  ``_floor.png``: every implementation's time
    over the floor, fwd+bwd, per op and dtype.  ``_clip.png``: clip device and host time."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    groups, impls = group(rows)
    net = {k: g for k, g in groups.items() if k[0] != "clip"}
    clip = {k: g for k, g in groups.items() if k[0] == "clip"}
    where = f"{meta.get('device', '?')}, {str(meta.get('date', '?'))[:10]}"
    written = []
    if any(speedup(g.get(BASELINE), g.get(SUBJECT)) for g in net.values()):
        base = "cuDNN / ATen cell" if meta.get("timer") == "do_bench" else "torch"
        path = Path(f"{stem}_speedup.png")
        _grid(plt, net, "pass", "dtype", lambda g: speedup(g.get(BASELINE), g.get(SUBJECT)),
              f"fastcells speed-up over {BASELINE} ({base}); above 1: fastcells is faster — {where}",
              path, labels=True)
        written.append(path)
    training = {k: g for k, g in net.items() if k[3] == "fwd+bwd"}
    if training:
        path = Path(f"{stem}_floor.png")
        _grid(plt, training, "dtype", "impl", lambda r: r["floor_ratio"] if _ok(r) else None,
              f"fwd+bwd time / hardware floor (1: at the floor) — {where}", path)
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


def _grid(plt, groups, col_by, bar_by, value, title, path, labels=False):
    """Subplots: a row per op, a column per ``col_by`` ('pass' or 'dtype'); in each, x = case and
    one bar per ``bar_by`` ('dtype': value(group), or 'impl': value(row))."""
    field = {"dtype": 2, "pass": 3}
    ops = _order({k[0] for k in groups}, OP_ORDER)
    cols = _order({k[field[col_by]] for k in groups},
                  PASS_ORDER if col_by == "pass" else DTYPE_ORDER)
    if bar_by == "dtype":
        names = _order({k[2] for k in groups}, DTYPE_ORDER)
    else:
        names = _order({i for g in groups.values() for i in g}, IMPL_ORDER)
    n_cases = max(len({k[1] for k in groups if k[0] == op}) for op in ops)
    width = max(4.0, 1.2 + 0.16 * n_cases * len(names))
    fig, axes = plt.subplots(len(ops), len(cols), squeeze=False,
                             figsize=(max(6.0, width * len(cols)), 3.0 * len(ops)))
    for r, op in enumerate(ops):
        for c, col in enumerate(cols):
            keys = [k for k in groups if k[0] == op and k[field[col_by]] == col]
            cases = list(dict.fromkeys(k[1] for k in keys))
            series = {}
            for name in names:
                vals = []
                for case in cases:
                    if bar_by == "dtype":
                        g = next((groups[k] for k in keys if k[1] == case and k[2] == name), None)
                        vals.append(value(g) if g else None)
                    else:
                        g = next((groups[k] for k in keys if k[1] == case), {})
                        vals.append(value(g[name]) if name in g else None)
                if any(vals):
                    series[name] = vals
            _bars(axes[r][c], cases, series, "ratio", from_one=True, value_labels=labels)
            axes[r][c].set_title(f"{op} {col}", fontsize=9)
    _title(fig, title)
    fig.tight_layout(rect=(0, 0, 1, 0.96 if len(ops) > 1 else 0.88))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _title(fig, title):
    """The figure's title, wrapped to its width (about 12 characters an inch at this size)."""
    fig.suptitle(textwrap.fill(title, int(fig.get_figwidth() * 12)), fontsize=10)


def _clip_plot(plt, groups, impls, title, path):
    keys = list(groups)
    labels = [f"{k[1]} {k[2]}" for k in keys]
    fig, axes = plt.subplots(1, 2, figsize=(max(5.0, 1.2 * len(keys)) * 2, 3.6))
    for ax, field, name in ((axes[0], "ms", "device ms per call"),
                            (axes[1], "host_ms", "host ms per call")):
        series = {i: [groups[k][i].get(field) if i in groups[k] else None for k in keys]
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
    """A short text table: every comparison's median ms per impl and fastcells' speed-up over
    native, then the errors and what was not timed."""
    groups, impls = group(rows)
    head = ["op", "case", "dtype", "pass"] + list(impls)
    has_subject = SUBJECT in impls and BASELINE in impls
    if has_subject:
        head += ["fc/native", "fc xfloor"]
    lines = [head]
    for (op, case, dtype, pass_), g in groups.items():
        cells = []
        for i in impls:
            r = g.get(i)
            text = _cell_ms(r)
            if _ok(r) and r.get("host_ms") is not None and r["host_ms"] != r["ms"]:
                text += f"/{r['host_ms']:.3g}h"
            cells.append(text)
        line = [op, case, dtype, pass_] + cells
        if has_subject:
            line += [_f(speedup(g.get(BASELINE), g.get(SUBJECT)), "{:.2f}x", ""),
                     _f((g.get(SUBJECT) or {}).get("floor_ratio"), "{:.1f}", "")]
        lines.append(line)
    widths = [max(len(str(line[c])) for line in lines) for c in range(len(head))]
    text = [f"fastcells benchmark ({meta.get('mode')}): {meta.get('device')}, {meta.get('date')}, "
            f"torch {meta.get('torch')}, triton {meta.get('triton')}, commit {meta.get('commit')}",
            "median ms per call (clip: device/host 'h'); fc/native = fastcells speed-up over native"]
    text += ["  ".join(str(v).rjust(w) if c >= 4 else str(v).ljust(w)
                       for c, (v, w) in enumerate(zip(line, widths))) for line in lines]
    errors = [r for r in rows if r.get("error")]
    if errors:
        text.append(f"{len(errors)} errors:")
        text += [f"  {r['op']} {r['case']} {r['dtype']} {r['impl']} {r['pass']}: {r['error']}"
                 for r in errors[:max_errors]]
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


def readme_section(json_path, link_base="bench/results", passes=("fwd", "fwd+bwd")):
    """A results section for the top-level README, built from one GPU results file: fastcells'
    speed-up over each baseline and its distance from the floor (``passes`` of the layers and
    cells; every clip row), naming the GPU and date."""
    meta, rows = load(json_path)
    groups, impls = group(rows)
    name = Path(json_path).stem
    out = [f"Measured on {meta.get('device')}, {str(meta.get('date'))[:10]} (torch "
           f"{meta.get('torch')}, triton {meta.get('triton')}, commit `{str(meta.get('commit'))[:12]}`, "
           f"plan `{meta.get('mode')}`): rows in [`{name}.json`]({link_base}/{name}.json), every "
           f"pass in [`{name}.md`]({link_base}/{name}.md), plots `{name}_*.png`. Speed-up = "
           "baseline time / fastcells time (above 1: fastcells is faster); x floor = fastcells "
           "time / the hardware floor measured in the same run.", ""]
    net = {k: g for k, g in groups.items() if k[0] != "clip" and k[3] in passes and _ok(g.get(SUBJECT))}
    bases = [i for i in impls if i != SUBJECT and any(i in g for g in net.values())]
    if net:
        out += ["| op | case | dtype | pass | fastcells ms | x floor | "
                + " | ".join(f"vs {b}" for b in bases) + " |", "|" + "---|" * (6 + len(bases))]
        for (op, case, dtype, pass_), g in net.items():
            s = g[SUBJECT]
            out.append(f"| {op} | {case} | {dtype} | {pass_} | {s['ms']:.4g} | "
                       f"{_f(s.get('floor_ratio'), '{:.1f}')} | "
                       + " | ".join(_f(speedup(g.get(b), s), "{:.2f}x", "") for b in bases) + " |")
        out.append("")
    clip = {k: g for k, g in groups.items() if k[0] == "clip" and _ok(g.get(SUBJECT))}
    cbases = [i for i in impls if i != SUBJECT and any(i in g for g in clip.values())]
    if clip:
        out += ["| clip | dtype | fastcells device ms | host ms | GB/s | "
                + " | ".join(f"vs {b} (device / host)" for b in cbases) + " |",
                "|" + "---|" * (5 + len(cbases))]
        for (_, case, dtype, _), g in clip.items():
            s = g[SUBJECT]
            vs = []
            for b in cbases:
                r = g.get(b)
                host = (r["host_ms"] / s["host_ms"] if _ok(r) and r.get("host_ms") and s.get("host_ms")
                        else None)
                vs.append(f"{_f(speedup(r, s), '{:.2f}x', '')} / {_f(host, '{:.2f}x', '')}")
            out.append(f"| {case} | {dtype} | {s['ms']:.4g} | {_f(s.get('host_ms'), '{:.3g}')} | "
                       f"{_f(s.get('gb_s'), '{:.0f}')} | " + " | ".join(vs) + " |")
        out.append("")
    return "\n".join(out)


def write(json_path, out_dir=None):
    """Write the markdown table and the plots of ``json_path``; returns the paths written."""
    json_path = Path(json_path)
    meta, rows = load(json_path)
    stem = (Path(out_dir) if out_dir else json_path.parent) / json_path.stem
    stem.parent.mkdir(parents=True, exist_ok=True)
    md = Path(f"{stem}.md")
    md.write_text(markdown(meta, rows) + "\n", encoding="utf-8")
    return [md] + plots(meta, rows, stem)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python bench/report.py", description=__doc__.split("\n\n")[0])
    p.add_argument("json", help="a results file written by bench/run.py (with --readme: a "
                   "folder, whose newest GPU result is used)")
    p.add_argument("--out", help="folder for the table and plots (default: beside the JSON)")
    p.add_argument("--summary", action="store_true", help="print the short summary table")
    p.add_argument("--no-write", action="store_true", help="write no table or plots")
    p.add_argument("--readme", action="store_true",
                   help="print the README's results section, built from the newest GPU result")
    args = p.parse_args(argv)
    if args.readme:
        path = Path(args.json)
        if path.is_dir():
            path = newest_gpu_result(path)
            if path is None:
                print(f"no GPU results in {args.json}", file=sys.stderr)
                return 1
        print(readme_section(path))
        return 0
    if not args.no_write:
        for path in write(args.json, args.out):
            print(f"wrote {path}")
    if args.summary:
        meta, rows = load(args.json)
        print(summary(meta, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
