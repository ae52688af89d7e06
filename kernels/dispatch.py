"""Which recurrence runs a layer: the per-step chain ("step") or the resident kernel ("resident").

``choose_recurrence(mode, dtype, B, H, T, device)`` answers from ``RULES``, a table of boxes in
which a GPU run measured the resident kernel faster than the step chain.  The table is EMPTY,
and that is the measurement: on an H200 (bench/recurrence_sweep.py, 2026-11-27, runs 4 and 5 in
bench/results/2026-11-27_NVIDIA-H200_run{4,5}/: LSTM and GRU, bf16 and fp32, H in {128, 256},
B in {16, 64} at T in {100, 1024} and B = 1 at T = 1024) the resident kernel's forward was
slower than the step chain's at every shape, by 1.2x to 4.2x; its fwd+bwd was slower too,
except at H = 128, T = 100, bf16, where it was 0.89x to 0.93x with the p20-p80 spreads
overlapping.  One program per 16 batch rows runs the whole hidden state: at B <= 16 one SM does
the work the step chain spreads over 32 to 64.  No box qualifies, so every layer takes the step
path.  A rule never reaches beyond what was measured: only its GPU, its mode and dtype, and
shapes inside its box.

The override ``FASTCELLS_RECURRENCE`` (read at every call, for sweeps and tests):

* ``auto`` (or unset): the table;
* ``step``: always the step chain;
* ``resident``: the resident kernel wherever it can run (``resident.supports_resident``), else
  the step chain: the projected LSTM (its projection is a separate matmul each step) and
  H > ``resident.MAX_H`` (the whole hidden state of a batch tile must fit in one program's
  registers) and a single step (T < 2: one launch already, with the input projection fused)
  fall back to "step".  It works under the interpreter too, so tests can force it.

How to fill the table (on each GPU kind that gets a rule):

1. Run the benchmark's recurrence cases twice on one card, once with
   ``FASTCELLS_RECURRENCE=step`` and once with ``=resident``, for every mode and dtype over the
   grid B in {1, 8, 16, 32, 64}, H in {64, 128, 256}, T in {100, 1024}, fwd and fwd+bwd, and
   commit both sets of rows under ``bench/results/<date>_<GPU>_recurrence/``.
2. For each (GPU, mode, dtype) add a ``Rule`` whose box (B <= max_B, H <= max_H, T >= min_T)
   contains only measured shapes where resident was faster than step in BOTH fwd and fwd+bwd,
   by more than the runs' p20-p80 spread; if no such box exists, add none.
3. Cite the results folder beside the rule.  A rule for one GPU name never applies to another.
"""
import os
from dataclasses import dataclass

import torch

from .resident import reason_not_resident

ENV = "FASTCELLS_RECURRENCE"
CHOICES = ("auto", "step", "resident")
DTYPE_NAMES = {torch.float64: "fp64", torch.float32: "fp32", torch.float16: "fp16",
               torch.bfloat16: "bf16"}


@dataclass(frozen=True)
class Rule:
    """The resident kernel measured faster on ``gpu`` (torch.cuda.get_device_name) for ``mode``
    and ``dtype`` ("fp32", "bf16", ...) at every B <= max_B, H <= max_H, T >= min_T."""
    gpu: str
    mode: str
    dtype: str
    max_B: int
    max_H: int
    min_T: int

    def covers(self, gpu, mode, dtype, B, H, T):
        return (gpu == self.gpu and mode == self.mode and dtype == self.dtype
                and B <= self.max_B and H <= self.max_H and T >= self.min_T)


# Empty until a GPU sweep is committed (see the module docstring).
RULES = ()


def _gpu_name(device):
    return torch.cuda.get_device_name(device)


_parsed = {}   # (variable, raw value) -> the choice: read at every call, parsed once


def _env_choice(name, choices, default):
    """The setting of environment variable ``name`` (``default`` when unset or empty),
    lower-cased; ValueError when it is not one of ``choices``."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = _parsed.get((name, raw))
    if value is None:
        value = raw.strip().lower() or default
        if value not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        _parsed[name, raw] = value
    return value


def override():
    """The value of FASTCELLS_RECURRENCE ("auto" when unset); ValueError when not a choice."""
    return _env_choice(ENV, CHOICES, "auto")


def choose_recurrence(mode, dtype, B, H, T, device, proj=False):
    """"step" or "resident" for one layer-direction (mode "lstm", "gru", "rnn_tanh",
    "rnn_relu"; ``proj``: the LSTM has a projection)."""
    want = override()
    # T < 2: a single step is one launch already, and fuses its input projection (a cell).
    if want == "step" or T < 2 or reason_not_resident(mode, B, H, H, dtype, proj) is not None:
        return "step"
    if want == "resident":
        return "resident"
    if not RULES or torch.device(device).type != "cuda":
        return "step"
    gpu, name = _gpu_name(device), DTYPE_NAMES[dtype]
    if any(rule.covers(gpu, mode, name, B, H, T) for rule in RULES):
        return "resident"
    return "step"


DIRECTIONS_ENV = "FASTCELLS_DIRECTIONS"


def fuse_directions():
    """Whether a bidirectional layer runs both directions in the same launches (stacked members,
    ``kernels.recurrence``): ``FASTCELLS_DIRECTIONS=fused``.  The default, ``separate``, launches
    each direction on its own: the fused path halves the step launches but stacks the inputs
    and weights of both directions per call, and no GPU run has measured it yet."""
    return _env_choice(DIRECTIONS_ENV, ("separate", "fused"), "separate") == "fused"
