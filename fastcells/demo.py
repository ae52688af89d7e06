"""The main job: ``python -m fastcells.demo``.

Why gated cells and gradient clipping exist, measured with fastcells' own modules and clip on the
*adding problem* (Hochreiter & Schmidhuber 1997): each input is a sequence of (value, marker)
pairs, values uniform in [0, 1], exactly one marker in each half of the sequence; the target is
the sum of the two marked values.  Predicting the mean gives an MSE of 1/6 ≈ 0.167; solving it
means carrying a value across at least half the sequence.

1. Gradient flow: ‖∂L/∂h_t‖ for every step t (:mod:`fastcells.diagnostics`) of a vanilla RNN, an
   LSTM and a GRU, at initialisation and after training, and the vanishing factor
   ‖∂L/∂h_T‖ / ‖∂L/∂h_1‖.
2. Long dependencies: the three trained with the same budget; test MSE against the constant
   prediction baseline.
3. Exploding gradients: a ReLU RNN whose recurrent weight grows the state by 12x over the
   sequence, trained by SGD without clipping and with ``fastcells.clip_grad_norm_``.

All data is synthetic and generated here; nothing is downloaded.
"""
import argparse
import json
import math
import re
import sys
import time
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

import fastcells
from fastcells.modules import TORCH_CLASSES, TWINS
from fastcells import diagnostics
from fastcells.backend import BACKENDS, resolve

CELLS = ("rnn", "lstm", "gru")
CELL_NAMES = {"rnn": "vanilla RNN (tanh)", "lstm": "LSTM", "gru": "GRU"}

#: "Solved" means: test MSE below this fraction of the constant-prediction baseline's MSE.
SOLVED_FRACTION = 0.1

# Settings; the seeds and timings behind them are in docs/demo.md.
PRESETS = {
    "quick": dict(seq_len=50, steps=1500),
    "default": dict(seq_len=100, steps=2000),
}
HIDDEN_SIZE = 32
BATCH_SIZE = 64
TEST_SIZE = 1000
LR = 1e-2               # Adam, for the long-dependency runs
CLIP_NORM = 1.0         # clip-by-global-norm, in every training run that clips
EVAL_POINTS = 30        # test-MSE evaluations per training run (the plotted curve)
EXPLODE_GROWTH = 12.0   # ReLU RNN with W_hh = g*I, g**seq_len = EXPLODE_GROWTH
EXPLODE_LR = 1e-2       # plain SGD, for steps // 10 steps (at least 20, at most 300)
TABLE_POINTS = 5        # steps shown in the gradient-flow table


def solved(test_mse, baseline_mse):
    """The one definition of 'solved'."""
    return bool(test_mse < SOLVED_FRACTION * baseline_mse)


@dataclass(frozen=True)
class Config:
    """One run's settings (``python -m fastcells.demo`` builds it from its arguments)."""

    seq_len: int
    steps: int
    seed: int
    device: torch.device
    backend: str            # the fastcells backend that runs (a name of BACKENDS)
    mode: str = "default"   # the preset: "quick" or "default"

    @property
    def explode_steps(self):
        return min(300, max(20, self.steps // 10))

    @property
    def backend_label(self):
        """The backend as printed and written to the JSON: 'auto (native)' says what 'auto'
        resolves to on this device."""
        resolved = resolve(self.backend, torch.zeros(0, device=self.device))
        return self.backend if self.backend == resolved else f"{self.backend} ({resolved})"


# ---------------------------------------------------------------------------------- results
@dataclass
class ModelResult:
    """One cell trained on the adding problem."""

    cell: str                       # one of CELLS
    test_mse: float                 # after training
    baseline_mse: float             # predicting the mean
    solved_at_step: Optional[int]   # the first evaluation that counts as solved
    curve: List[Tuple[int, float]]  # (training step, test MSE), step 0 included
    seconds: float                  # training time
    flow_init: diagnostics.GradientFlow
    flow: diagnostics.GradientFlow  # after training

    @property
    def solved(self):
        return solved(self.test_mse, self.baseline_mse)   # the module's one definition


@dataclass
class ClipRun:
    """One SGD run of the exploding ReLU RNN: per step, the loss and the gradient norm."""

    losses: List[float]
    grad_norms: List[float]

    @property
    def nonfinite(self):
        """The 1-based steps whose loss or gradient norm is inf or nan."""
        return [i + 1 for i, (l, n) in enumerate(zip(self.losses, self.grad_norms))
                if not (math.isfinite(l) and math.isfinite(n))]

    @property
    def nonfinite_steps(self):
        return len(self.nonfinite)

    @property
    def first_nonfinite_step(self):
        return next(iter(self.nonfinite), None)


@dataclass
class ClipResult:
    """The exploding-gradient experiment: W_hh = gain * I, the same run without and with
    clipping."""

    gain: float
    steps: int
    without_clip: ClipRun
    with_clip: ClipRun


@dataclass
class DemoResult:
    """All three experiments."""

    models: List[ModelResult]       # in the order of CELLS
    clipping: ClipResult
    baseline_mse: float
    seconds: float


# ----------------------------------------------------------------------------------- the task
def adding_problem(n, seq_len, generator):
    """n sequences of the adding problem: x (seq_len, n, 2) time-major, y (n,); on the CPU."""
    if seq_len < 2:
        raise ValueError(f"the adding problem needs seq_len >= 2, got {seq_len}")
    values = torch.rand(n, seq_len, generator=generator)
    first = torch.randint(0, seq_len // 2, (n,), generator=generator)
    second = torch.randint(seq_len // 2, seq_len, (n,), generator=generator)
    markers = torch.zeros(n, seq_len)
    rows = torch.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    x = torch.stack([values, markers], dim=-1).transpose(0, 1).contiguous()
    return x, (values * markers).sum(dim=1)


class AddingModel(nn.Module):
    """A one-layer fastcells RNN/LSTM/GRU and a linear read-out of its last hidden state."""

    def __init__(self, cell, hidden_size=HIDDEN_SIZE, nonlinearity="tanh"):
        super().__init__()
        if cell not in TORCH_CLASSES:
            raise ValueError(f"unknown cell {cell!r}; expected one of {', '.join(CELLS)}")
        extra = dict(nonlinearity=nonlinearity) if cell == "rnn" else {}
        self.rnn = TWINS[TORCH_CLASSES[cell][0]](2, hidden_size, **extra)
        self.head = nn.Linear(hidden_size, 1)

    def read_out(self, output):
        return self.head(output[-1]).squeeze(-1)

    def forward(self, x):
        output, _ = self.rnn(x)
        return self.read_out(output)


def gradient_flow(model, x, y):
    """‖∂L/∂h_t‖ of the test loss (computed in float64, so vanishing is measured, not flushed)."""
    return diagnostics.hidden_grad_norms(
        model.rnn, x, lambda output, hidden: F.mse_loss(model.read_out(output), y),
        dtype=torch.float64)


# ----------------------------------------------------------------------------------- progress
class Progress:
    """One updating line on a terminal; a few plain lines otherwise (logs, captured output)."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def start(self, label, lines=4):
        """A new task; ``lines``: how many plain lines to print for it when not on a terminal."""
        self.label = label
        self.lines = lines
        self._last_line = 0
        self.t0 = time.perf_counter()

    def note(self, text):
        self.stream.write(text + "\n")
        self.stream.flush()

    def update(self, step, total, info=""):
        elapsed = time.perf_counter() - self.t0
        if self.tty:
            width = 24
            done = int(width * step / total)
            bar = "#" * done + "." * (width - done)
            self.stream.write(f"\r  {self.label:<22} [{bar}] {step:>5}/{total}  {info}  "
                              f"{elapsed:5.1f}s ")
            if step == total:
                self.stream.write("\n")
            self.stream.flush()
            return
        line = self.lines * step // total
        if line > self._last_line:
            self._last_line = line
            self.stream.write(f"  {self.label:<22} {step:>5}/{total}  {info}  {elapsed:5.1f}s\n")
            self.stream.flush()


# ------------------------------------------------------------------------------- experiments
def _cpu_float(t):
    return float(t.detach().float().cpu())


@torch.no_grad()
def _test_mse(model, x, y):
    was = model.training
    model.eval()
    mse = _cpu_float(F.mse_loss(model(x), y))
    model.train(was)
    return mse


def train_cell(cell, cfg, test, progress):
    """Train one cell on the adding problem; returns its :class:`ModelResult`.

    test: (x, y, baseline MSE)."""
    x_test, y_test, baseline = test
    device = cfg.device
    torch.manual_seed(cfg.seed)
    model = AddingModel(cell).to(device)
    flow_init = gradient_flow(model, x_test, y_test)
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=LR)
    gen = torch.Generator().manual_seed(cfg.seed + 1)   # the same batches for every cell
    steps = cfg.steps
    eval_every = max(1, steps // EVAL_POINTS)
    curve = [(0, _test_mse(model, x_test, y_test))]
    running = None
    progress.start(f"training {cell}")
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        x, y = adding_problem(BATCH_SIZE, cfg.seq_len, gen)
        x, y = x.to(device), y.to(device)
        loss = F.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        fastcells.clip_grad_norm_(params, CLIP_NORM)
        opt.step()
        running = loss.detach() if running is None else 0.98 * running + 0.02 * loss.detach()
        if step % eval_every == 0 or step == steps:
            curve.append((step, _test_mse(model, x_test, y_test)))
            progress.update(step, steps,
                            f"train MSE {_cpu_float(running):.4f}  test MSE {curve[-1][1]:.4f}")
    seconds = time.perf_counter() - t0
    flow = gradient_flow(model, x_test, y_test)
    solved_at = next((s for s, v in curve if solved(v, baseline)), None)
    return ModelResult(cell=cell, test_mse=curve[-1][1], baseline_mse=baseline,
                       solved_at_step=solved_at, curve=curve, seconds=seconds,
                       flow_init=flow_init, flow=flow)


def exploding(cfg, progress):
    """A ReLU RNN with W_hh = g*I (g**T = EXPLODE_GROWTH), SGD, without and with clipping."""
    device, T = cfg.device, cfg.seq_len
    gain = EXPLODE_GROWTH ** (1.0 / T)
    steps = cfg.explode_steps
    runs = []
    for clip in (False, True):
        torch.manual_seed(cfg.seed)
        model = AddingModel("rnn", nonlinearity="relu").to(device)
        with torch.no_grad():
            model.rnn.weight_hh_l0.copy_(gain * torch.eye(HIDDEN_SIZE))
        params = list(model.parameters())
        opt = torch.optim.SGD(params, lr=EXPLODE_LR)
        gen = torch.Generator().manual_seed(cfg.seed + 3)
        losses, norms = [], []
        progress.start("clip_grad_norm_" if clip else "no clipping", lines=1)
        for step in range(1, steps + 1):
            x, y = adding_problem(BATCH_SIZE, T, gen)
            loss = F.mse_loss(model(x.to(device)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                norm = fastcells.clip_grad_norm_(params, CLIP_NORM)
            else:   # measure the norm without touching the gradients
                norm = fastcells.get_total_norm([p.grad for p in params])
            opt.step()
            losses.append(_cpu_float(loss))
            norms.append(_cpu_float(norm))
            progress.update(step, steps, f"loss {losses[-1]:.4g}")
        runs.append(ClipRun(losses=losses, grad_norms=norms))
    return ClipResult(gain, steps, *runs)


def run(cfg, progress=None):
    """All three experiments; returns a :class:`DemoResult` (the JSON's content plus curves)."""
    progress = progress or Progress()
    t0 = time.perf_counter()
    x_test, y_test = adding_problem(TEST_SIZE, cfg.seq_len,
                                    torch.Generator().manual_seed(cfg.seed + 2))
    x_test, y_test = x_test.to(cfg.device), y_test.to(cfg.device)
    baseline = _cpu_float(((y_test - y_test.mean()) ** 2).mean())
    progress.note(f"long dependencies: training {', '.join(CELLS)} for {cfg.steps} steps each")
    models = [train_cell(cell, cfg, (x_test, y_test, baseline), progress) for cell in CELLS]
    progress.note(f"exploding gradients: ReLU RNN, {cfg.explode_steps} SGD steps without "
                  "and with clipping")
    clipping = exploding(cfg, progress)
    return DemoResult(models=models, clipping=clipping, baseline_mse=baseline,
                      seconds=time.perf_counter() - t0)


# ------------------------------------------------------------------------------------ output
def _fmt(v, spec=".2e"):
    if v is None:
        return "-"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return format(v, spec)


def _table(header, rows):
    cols = [header] + rows
    widths = [max(len(str(r[i])) for r in cols) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).rjust(w) if i else str(c).ljust(w)  # noqa: E731
                               for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] +
                     [line(r) for r in rows])


def table_steps(seq_len, points=TABLE_POINTS):
    """A few 1-based steps from 1 to seq_len, evenly spaced."""
    return sorted({max(1, round(i * seq_len / (points - 1))) for i in range(points)})


def report(results, cfg, out=None):
    out = out or sys.stdout
    p = lambda *a: print(*a, file=out)  # noqa: E731
    T = cfg.seq_len
    ts = table_steps(T)
    p()
    p(f"Gradient flow: ||dL/dh_t|| of the test loss, mean over {TEST_SIZE} test sequences")
    p(f"  vanishing factor = ||dL/dh_{T}|| / ||dL/dh_1||: "
      "large means step 1 barely affects the loss")
    rows = []
    for m in results.models:
        for when, flow in (("init", m.flow_init), ("trained", m.flow)):
            rows.append([m.cell, when] + [_fmt(flow.at(t)) for t in ts] +
                        [_fmt(flow.vanishing_factor)])
    p(_table(["cell", "when"] + [f"t={t}" for t in ts] + ["vanishing factor"], rows))

    c = results.clipping
    p()
    p(f"Exploding gradients: ReLU RNN, W_hh = {c.gain:.4f} * I ({c.gain:.4f}^{T} = "
      f"{EXPLODE_GROWTH:g}), SGD lr {EXPLODE_LR}, {c.steps} steps")
    p("  non-finite step: the loss or the gradient norm is inf or nan")
    rows = []
    for r, name in ((c.without_clip, "without clipping"),
                    (c.with_clip, f"fastcells.clip_grad_norm_(max_norm={CLIP_NORM})")):
        first = r.first_nonfinite_step
        rows.append([name, f"{r.nonfinite_steps}/{c.steps}",
                     "-" if first is None else str(first),
                     _fmt(r.grad_norms[0]), _fmt(r.losses[-1], ".4g")])
    p(_table(["training", "non-finite steps", "first", "grad norm, step 1", "final loss"], rows))

    p()
    p(f"Long dependencies: test MSE after {cfg.steps} steps of Adam (lr {LR}, batch "
      f"{BATCH_SIZE}, hidden {HIDDEN_SIZE}, clip_grad_norm_ {CLIP_NORM}), the same for every cell")
    p(f"  baseline (predict the mean): MSE {results.baseline_mse:.4f}; solved: test MSE below "
      f"{SOLVED_FRACTION:.0%} of it")
    p(f"Summary (seq_len {T}, {cfg.steps} steps, seed {cfg.seed}, {cfg.device}, "
      f"backend {cfg.backend_label}):")
    rows = []
    for m in results.models:
        rows.append([CELL_NAMES[m.cell], f"{m.test_mse:.4f}", f"{m.baseline_mse:.4f}",
                     f"{m.test_mse / m.baseline_mse:.1%}", "yes" if m.solved else "no",
                     "-" if m.solved_at_step is None else str(m.solved_at_step),
                     _fmt(m.flow_init.vanishing_factor), _fmt(m.flow.vanishing_factor),
                     f"{m.seconds:.1f}s"])
    p(_table(["cell", "test MSE", "baseline", "ratio", "solved", "first solved at", "vanish. init",
              "vanish. trained", "train time"], rows))
    p(f"non-finite training steps: {c.without_clip.nonfinite_steps} without clipping, "
      f"{c.with_clip.nonfinite_steps} with fastcells.clip_grad_norm_")
    p(f"total time {results.seconds:.1f}s")


def _finite_or_none(v):
    return v if isinstance(v, (int, bool)) or (v is not None and math.isfinite(v)) else None


def _json_number(v):
    """NaN becomes null; an infinite value is kept (written as 1e999 by :func:`dumps_json`)."""
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def dumps_json(doc):
    """Standard JSON; infinity (a vanishing factor whose first-step gradient is exactly 0) is
    written as the number 1e999, which JSON parsers read back as infinity."""
    text = json.dumps(doc, indent=2, allow_nan=True)
    return re.sub(r'(?<=[\s:\[,])(-?)Infinity(?=[\s,\]}])', r"\g<1>1e999", text) + "\n"


def to_json(results, cfg):
    """The JSON document of a :class:`DemoResult` (see docs/demo.md).  A NaN test MSE or
    vanishing factor becomes null; an infinite vanishing factor stays infinite (:func:`dumps_json`
    writes it as 1e999); a final loss that is inf or nan (the run without clipping) becomes
    null."""
    models = [dict(cell=m.cell, seq_len=cfg.seq_len, test_mse=_json_number(m.test_mse),
                   baseline_mse=m.baseline_mse, solved=m.solved,
                   vanishing_factor_init=_json_number(m.flow_init.vanishing_factor),
                   vanishing_factor=_json_number(m.flow.vanishing_factor),
                   solved_at_step=m.solved_at_step, steps=cfg.steps, train_seconds=m.seconds)
              for m in results.models]
    c = results.clipping
    clipping = dict(nonfinite_steps_without_clip=c.without_clip.nonfinite_steps,
                    nonfinite_steps_with_clip=c.with_clip.nonfinite_steps,
                    steps=c.steps, max_norm=CLIP_NORM, recurrent_gain=c.gain,
                    final_loss_without_clip=_finite_or_none(c.without_clip.losses[-1]),
                    final_loss_with_clip=_finite_or_none(c.with_clip.losses[-1]))
    config = dict(seq_len=cfg.seq_len, steps=cfg.steps, seed=cfg.seed,
                  device=str(cfg.device), backend=cfg.backend_label, hidden_size=HIDDEN_SIZE,
                  batch_size=BATCH_SIZE, test_size=TEST_SIZE,
                  solved="test_mse < %g * baseline_mse" % SOLVED_FRACTION)
    return dict(models=models, clipping=clipping, config=config)


def plot(results, cfg, path):
    """Four panels: gradient flow at init and trained, test MSE, exploding loss. PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"rnn": "tab:red", "lstm": "tab:blue", "gru": "tab:green"}
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    T = cfg.seq_len
    steps = range(1, T + 1)
    for ax, key, title in ((axes[0, 0], "flow_init", "at initialisation"),
                           (axes[0, 1], "flow", f"after {cfg.steps} training steps")):
        for m in results.models:
            f = getattr(m, key)
            ax.semilogy(steps, f.mean.clamp_min(1e-300).numpy(), color=colors[m.cell],
                        label=f"{m.cell} (vanishing factor {_fmt(f.vanishing_factor, '.1e')})")
        ax.set_title(f"gradient flow {title}")
        ax.set_xlabel("step t")
        ax.set_ylabel(r"$\|\partial L / \partial h_t\|$ (test batch mean)")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=9)
    ax = axes[1, 0]
    for m in results.models:
        s, v = zip(*m.curve)
        verdict = "solved" if m.solved else "not solved"
        ax.semilogy(s, v, color=colors[m.cell], marker=".",
                    label=f"{m.cell}: {m.test_mse:.4f} ({verdict})")
    base = results.baseline_mse
    ax.axhline(base, color="gray", ls="--", label=f"predict the mean ({base:.3f})")
    ax.axhline(SOLVED_FRACTION * base, color="gray", ls=":",
               label=f"solved below {SOLVED_FRACTION:.0%} of it")
    ax.set_title(f"adding problem, T={T}: test MSE")
    ax.set_xlabel("training step")
    ax.set_ylabel("test MSE")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=9)
    ax = axes[1, 1]
    c = results.clipping
    for r, color, name in ((c.without_clip, "tab:red", "without clipping"),
                           (c.with_clip, "tab:blue", f"clip_grad_norm_({CLIP_NORM})")):
        n, first = r.nonfinite_steps, r.first_nonfinite_step
        ax.semilogy(range(1, len(r.losses) + 1), r.losses, color=color,
                    marker="." if n else None, label=f"{name}: {n} non-finite steps")
        if first is not None:
            ax.axvline(first, color=color, ls=":", alpha=0.7)
            ax.annotate(f"{name}: loss or gradient non-finite\nfrom step "
                        f"{first} on ({n} of {len(r.losses)} steps)",
                        (first, 0.62), xycoords=("data", "axes fraction"),
                        xytext=(8, 0), textcoords="offset points", color=color, fontsize=9,
                        bbox=dict(boxstyle="round", fc="white", ec=color, alpha=0.9))
    ax.set_title(f"exploding gradients: ReLU RNN, W_hh = {c.gain:.3f} I, SGD")
    ax.set_xlabel("training step")
    ax.set_ylabel("training loss (MSE)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=9)
    fig.suptitle("fastcells demo: vanishing and exploding gradients on the adding problem")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -------------------------------------------------------------------------------------- CLI
def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m fastcells.demo",
        description="Vanishing and exploding gradients in RNN, LSTM and GRU, measured with "
        "fastcells' modules and clip_grad_norm_ on the adding problem (synthetic data).")
    p.add_argument("--quick", action="store_true",
                   help="smaller run: seq_len %(q_seq)d, %(q_steps)d steps (under a minute on "
                   "a 2-core CPU)" % dict(q_seq=PRESETS["quick"]["seq_len"],
                                          q_steps=PRESETS["quick"]["steps"]))
    p.add_argument("--seq-len", type=int, default=None,
                   help=f"sequence length (default {PRESETS['default']['seq_len']}, quick "
                   f"{PRESETS['quick']['seq_len']})")
    p.add_argument("--steps", type=int, default=None,
                   help=f"training steps per cell (default {PRESETS['default']['steps']}, quick "
                   f"{PRESETS['quick']['steps']})")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and data (default 0)")
    p.add_argument("--device", default=None,
                   help="torch device (default cuda when available, else cpu)")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="fastcells backend (default auto: the Triton kernels on CUDA, torch's "
                   "native ops on the CPU)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for torch (default 1: these small recurrent steps run "
                   "fastest on one thread; 0 keeps torch's setting)")
    p.add_argument("--plot", metavar="PATH", help="write the plots to this PNG file")
    p.add_argument("--json", metavar="PATH", help="write the results to this JSON file")
    return p


def parse_config(argv=None):
    """(the parsed arguments, their :class:`Config`); a bad argument exits with the usage."""
    parser = build_parser()
    args = parser.parse_args(argv)
    preset = PRESETS["quick" if args.quick else "default"]
    seq_len = preset["seq_len"] if args.seq_len is None else args.seq_len
    steps = preset["steps"] if args.steps is None else args.steps
    if seq_len < 2:
        parser.error(f"--seq-len must be at least 2, got {seq_len}")
    if steps < 1:
        parser.error(f"--steps must be at least 1, got {steps}")
    if args.threads < 0:
        parser.error(f"--threads must be 0 or more, got {args.threads}")
    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as e:
        parser.error(f"--device: {e}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available (use --device cpu)")
    cfg = Config(seq_len=seq_len, steps=steps, seed=args.seed, device=device,
                 backend=args.backend, mode="quick" if args.quick else "default")
    try:   # a clear message now rather than a traceback mid-run (triton on CPU, say)
        cfg.backend_label   # resolves the backend on the device
    except RuntimeError as e:
        parser.error(f"--backend {args.backend}: {e}")
    if args.plot and not args.plot.lower().endswith(".png"):
        parser.error(f"--plot writes a PNG; give a path ending in .png, got {args.plot!r}")
    return args, cfg


def _have_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv=None):
    args, cfg = parse_config(argv)
    out = sys.stdout
    no_plot = ("matplotlib is not installed (pip install matplotlib, or fastcells[demo]): "
               f"skipping the plot {args.plot}")
    can_plot = bool(args.plot) and _have_matplotlib()
    if args.plot and not can_plot:
        print(no_plot, file=out)
    threads = torch.get_num_threads()
    if cfg.device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    try:
        print(f"fastcells demo ({cfg.mode}): the adding problem (Hochreiter & Schmidhuber 1997)",
              file=out)
        print(f"  {cfg.seq_len} (value, marker) pairs; the target is the sum of the two marked "
              "values;\n  predicting the mean scores MSE 1/6 = 0.167. RNN, LSTM and GRU: "
              f"fastcells modules, hidden {HIDDEN_SIZE},\n  device {cfg.device}, backend "
              f"{cfg.backend_label}, seed {cfg.seed}. Solved: test MSE < "
              f"{SOLVED_FRACTION:.0%} of the baseline's.", file=out)
        out.flush()
        with fastcells.use_backend(cfg.backend):
            results = run(cfg)
    finally:
        torch.set_num_threads(threads)
    report(results, cfg, out)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(dumps_json(to_json(results, cfg)))
        print(f"wrote {args.json}", file=out)
    if can_plot:
        plot(results, cfg, args.plot)
        print(f"wrote {args.plot}", file=out)
    elif args.plot:
        print(no_plot, file=out)
    return results


if __name__ == "__main__":
    main()
