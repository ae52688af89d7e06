"""The benchmark cases (shapes and parameter sets) and the plans that pick from them.

Shapes: PyTorch's fastrnns defaults (T=100, B=64, I=H=512, one layer), small batch, large hidden,
long sequences, FlashRNN's one-head shape, two bidirectional layers; one-step cells; three
parameter sets for clip-by-global-norm (bench/README.md lists them all).
"""
from dataclasses import dataclass, field

import numpy as np
import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_ALIASES = {"float32": "fp32", "float": "fp32", "bfloat16": "bf16", "float16": "fp16",
                 "half": "fp16"}
LAYER_OPS = ("lstm", "gru", "rnn")
CELL_OPS = ("lstm_cell", "gru_cell", "rnn_cell")
OPS = LAYER_OPS + CELL_OPS + ("clip",)
OP_GROUPS = {"layers": LAYER_OPS, "cells": CELL_OPS}

# fastcells and the baselines a user would otherwise reach for (see workloads.py)
LAYER_IMPLS = ("fastcells", "native", "cell_loop", "reference", "reference_compiled")
CELL_IMPLS = ("fastcells", "native", "reference", "reference_compiled")
CLIP_IMPLS = ("fastcells", "torch_foreach", "torch_loop", "reference")
IMPLS = tuple(dict.fromkeys(LAYER_IMPLS + CELL_IMPLS + CLIP_IMPLS))
PASSES = ("fwd", "bwd", "fwd+bwd")


def dtype_name(dtype):
    return {v: k for k, v in DTYPES.items()}[dtype]


# ------------------------------------------------------------------------------------ the cases
@dataclass(frozen=True)
class LayerCase:
    """A torch.nn.LSTM/GRU/RNN-shaped network: x (T, B, I), hidden H."""
    op: str
    name: str
    T: int
    B: int
    I: int
    H: int
    layers: int = 1
    bidirectional: bool = False
    # A packed batch: each sequence's length (T = the longest); None for a padded batch.
    lengths: tuple = field(default=None, repr=False)

    @property
    def passes(self):
        return PASSES

    @property
    def packed(self):
        return self.lengths is not None

    @property
    def rows(self):
        """The (step, sequence) pairs a layer computes: T*B padded, the sum of lengths packed."""
        return sum(self.lengths) if self.packed else self.T * self.B

    def shape(self):
        out = dict(T=self.T, B=self.B, I=self.I, H=self.H, layers=self.layers,
                   bidirectional=self.bidirectional)
        if self.packed:
            out.update(lengths=f"{min(self.lengths)}..{max(self.lengths)}", active=self.rows)
        return out


@dataclass(frozen=True)
class CellCase:
    """One step of a cell: x (B, I), hidden H."""
    op: str
    name: str
    B: int
    I: int
    H: int

    @property
    def mode(self):
        return self.op[: -len("_cell")]

    @property
    def passes(self):
        return PASSES

    def shape(self):
        return dict(B=self.B, I=self.I, H=self.H)


@dataclass(frozen=True)
class ClipCase:
    """A parameter set whose gradients are clipped by their global norm."""
    name: str
    shapes: tuple = field(repr=False)
    description: str = ""
    op: str = "clip"

    @property
    def passes(self):
        return ("clip",)

    @property
    def numel(self):
        return sum(int(np.prod(s)) for s in self.shapes)

    def shape(self):
        return dict(tensors=len(self.shapes), numel=self.numel, params=self.description)


def spread_lengths(B, T, seed=0):
    """B sequence lengths evenly spaced over 1..T (rounded), in a fixed shuffled order (a seeded
    permutation: a real batch is not sorted, so packing must sort it)."""
    lengths = np.rint(np.linspace(1, T, B)).astype(int)
    return tuple(int(n) for n in np.random.default_rng(seed).permutation(lengths))


def packed_case(op, B, T, I, H):
    """A PackedSequence of B sequences with lengths spread over 1..T (``spread_lengths``)."""
    return LayerCase(op, f"packed-B{B}-T{T}", T=T, B=B, I=I, H=H, lengths=spread_lengths(B, T))


def layer_cases(op):
    """The standard layer shapes of one op (lstm, gru or rnn)."""
    cases = [LayerCase(op, "fastrnns", T=100, B=64, I=512, H=512)]
    for T in (100, 1024):
        for B in (1, 8, 16):
            cases.append(LayerCase(op, f"small-B{B}-T{T}", T=T, B=B, I=256, H=256))
    cases.append(LayerCase(op, "large-H1024", T=100, B=64, I=1024, H=1024))
    cases.append(LayerCase(op, "flashrnn-1head", T=1024, B=16, I=768, H=768))
    cases.append(LayerCase(op, "fastrnns-2L-bidir", T=100, B=64, I=512, H=512, layers=2,
                           bidirectional=True))
    cases.append(packed_case(op, B=64, T=100, I=512, H=512))
    return cases


def layer_case(op, name):
    return next(c for c in layer_cases(op) if c.name == name)


def cell_cases(op):
    return [CellCase(op, "step-B64-H512", B=64, I=512, H=512),
            CellCase(op, "step-B1024-H256", B=1024, I=256, H=256),  # an RL rollout step
            CellCase(op, "step-B1-H128", B=1, I=128, H=128)]


def lstm_lm_shapes(vocab=10_000, d=650, layers=2):
    """Zaremba et al.'s medium PTB language model: embedding, 2-layer LSTM, decoder."""
    shapes = [(vocab, d)]
    for _ in range(layers):
        shapes += [(4 * d, d), (4 * d, d), (4 * d,), (4 * d,)]
    return tuple(shapes + [(vocab, d), (vocab,)])


def transformer_shapes(blocks=16, d=768, ff=3072, vocab=32_000, positions=1024):
    """200 tensors shaped like a BERT-base-width encoder: 16 blocks of 12 tensors (qkv, out,
    two layer norms, two feed-forward layers; weights and biases) and 8 more (embeddings,
    embedding and final layer norms, pooler)."""
    block = [(3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,), (ff, d), (ff,), (d, ff), (d,),
             (d,), (d,)]
    extra = [(vocab, d), (positions, d), (d,), (d,), (d,), (d,), (d, d), (d,)]
    return tuple(block * blocks + extra)


def small_shapes(n=2000, seed=0):
    """``n`` small tensors (16 to 16384 elements, log-uniform, a fixed draw): the many-small-
    parameters case, where per-tensor launches and host overhead dominate."""
    rng = np.random.default_rng(seed)
    sizes = np.exp(rng.uniform(np.log(16), np.log(16384), size=n)).astype(int)
    return tuple((int(s),) for s in sizes)


def clip_cases():
    return [ClipCase("lstm-lm", lstm_lm_shapes(), "embedding 10000x650, 2-layer LSTM 650, decoder"),
            ClipCase("transformer-200", transformer_shapes(), "200 tensors, d=768, 16 blocks"),
            ClipCase("small-2000", small_shapes(), "2000 tensors of 16..16384 elements")]


# ------------------------------------------------------------------------------------ the plans
@dataclass(frozen=True)
class Job:
    """One case in some dtypes, timed for some implementations."""
    case: object
    dtypes: tuple
    impls: tuple


def _jobs(cases, dtypes, impls):
    return [Job(c, tuple(dtypes), tuple(impls)) for c in cases]


# The layers plan on a GPU, most important first: (case name, ops), then the rest of
# layer_cases for lstm and gru, then rnn.
LAYERS_PRIORITY = (("fastrnns", ("lstm", "gru")), ("small-B16-T1024", ("lstm", "gru")),
                   ("small-B1-T1024", ("lstm",)), ("flashrnn-1head", ("lstm",)),
                   ("fastrnns-2L-bidir", ("lstm",)), ("large-H1024", ("lstm",)),
                   ("packed-B64-T100", ("lstm",)))
LAYERS_DTYPES = ("bf16", "fp32", "fp16")        # bf16 first: most of the targets are bf16


def _layers_plan(cuda):
    """``layers``: fastcells against native for the recurrent layers, in priority order (see
    LAYERS_PRIORITY).  On CPU: the small-batch shape (B=16, H=256, T=100) for lstm, a packed
    batch of 16 sequences of lengths 1..100 at H=256 (lstm), the small-batch shape for gru and
    rnn, in fp32, with the eager reference beside native (the Triton kernels are not timed
    there)."""
    if not cuda:
        cases = [layer_case("lstm", "small-B16-T100"),
                 packed_case("lstm", B=16, T=100, I=256, H=256),
                 layer_case("gru", "small-B16-T100"), layer_case("rnn", "small-B16-T100")]
        return _jobs(cases, ("fp32",), ("fastcells", "native", "reference"))
    order = [layer_case(op, name) for name, ops in LAYERS_PRIORITY for op in ops]
    rest = [c for pair in zip(layer_cases("lstm"), layer_cases("gru")) for c in pair]
    order += [c for c in rest + layer_cases("rnn") if c not in order]
    return _jobs(order, LAYERS_DTYPES, ("fastcells", "native"))


PLANS = ("full", "quick", "layers", "smoke")


def plan(mode, device):
    """The jobs of a run, most important first (a time budget cuts from the end).

    ``full``: every case, dtype and baseline.  ``quick`` (the GPU check): the fastrnns shape for
    LSTM, GRU and RNN in fp32 and bf16 against cuDNN, the cell loop and the reference; the LSTM
    cell at B=64 H=512 and at B=1024 H=256 (an RL rollout step), the GRU cell at B=64 H=512;
    the three clip sets; one torch.compile case.  On CPU, ``quick`` takes the small-batch shape
    (B=16, H=256, T=100) and fp32 only, which a CPU times in seconds.  ``layers``: the recurrent
    layers, fastcells against native, in priority order (``_layers_plan``).  ``smoke``: tiny shapes
    that only check the code runs (the default test suite's smoke test)."""
    cuda = device.type == "cuda"
    if mode == "full":
        jobs = []
        for op in LAYER_OPS:
            jobs += _jobs(layer_cases(op), DTYPES, LAYER_IMPLS)
        for op in CELL_OPS:
            jobs += _jobs(cell_cases(op), DTYPES, CELL_IMPLS)
        return jobs + _jobs(clip_cases(), ("fp32", "bf16"), CLIP_IMPLS)
    if mode == "quick":
        # Most important first, so that a time budget cuts the least important: fastcells
        # against cuDNN, then the clip, the cell, the other baselines, the compiled reference.
        shape = "fastrnns" if cuda else "small-B16-T100"
        dtypes = ("fp32", "bf16") if cuda else ("fp32",)
        layers = [layer_case(op, shape) for op in LAYER_OPS]
        return (_jobs(layers, dtypes, ("fastcells", "native"))
                + _jobs(clip_cases(), dtypes, ("fastcells", "torch_foreach", "torch_loop")
                        if cuda else ("reference", "torch_foreach", "torch_loop"))
                + _jobs(cell_cases("lstm_cell")[:2] + cell_cases("gru_cell")[:1], dtypes,
                        ("fastcells", "native", "reference"))
                + _jobs(layers, dtypes, ("cell_loop", "reference"))
                + _jobs(layers[:1], ("fp32",), ("reference_compiled",)))
    if mode == "layers":
        return _layers_plan(cuda)
    if mode == "smoke":
        jobs = []
        for op in LAYER_OPS:
            jobs += _jobs([LayerCase(op, "tiny", T=3, B=2, I=5, H=7)], ("fp32",), LAYER_IMPLS[:4])
        jobs += _jobs([LayerCase("lstm", "tiny-2L-bidir", T=3, B=2, I=5, H=6, layers=2,
                                 bidirectional=True)], ("fp32", "bf16"), LAYER_IMPLS[:4])
        jobs += _jobs([packed_case("lstm", B=4, T=5, I=5, H=7)], ("fp32",),
                      ("fastcells", "native", "reference"))
        for op in CELL_OPS:
            jobs += _jobs([CellCase(op, "tiny", B=3, I=5, H=7)], ("fp32",), CELL_IMPLS[:3])
        jobs += _jobs([ClipCase("tiny", ((7, 5), (5,), (3, 3)), "3 small tensors"),
                       ClipCase("tiny-50", small_shapes(50), "50 small tensors")],
                      ("fp32", "bf16"), CLIP_IMPLS)
        return jobs
    raise ValueError(f"unknown plan {mode!r}; expected one of {', '.join(PLANS)}")


def select(jobs, ops=None, dtypes=None, impls=None, names=None):
    """Keep the jobs (and their dtypes and impls) that the CLI's --ops/--dtypes/--impls/--cases
    name."""
    out = []
    for job in jobs:
        if ops and job.case.op not in ops or names and job.case.name not in names:
            continue
        d = tuple(x for x in job.dtypes if not dtypes or x in dtypes)
        i = tuple(x for x in job.impls if not impls or x in impls)
        if d and i:
            out.append(Job(job.case, d, i))
    return out
