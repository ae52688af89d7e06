"""The hardware floor of every row: the largest of FLOPs / matmul rate, bytes / copy bandwidth and,
for recurrences, the sequential bound (dependent steps x the measured cost of one).

The rates are measured once per run on the device itself (not taken from a datasheet):

* copy bandwidth: ``dst.copy_(src)`` on a large buffer (1 GiB on CUDA), counting the bytes read
  and the bytes written;
* matmul rate: an n x n x n ``torch.matmul`` (n = 8192 on CUDA) per dtype; float32 runs under
  torch's current TF32 setting (``torch.backends.cuda.matmul.allow_tf32``, recorded in the run's
  metadata), which the fastcells kernels follow too.

The models (s = bytes per element of the dtype; G = gates: LSTM 4, GRU 3, RNN 1; D = 2 when
bidirectional, else 1; a layer l reads I_l = I (l = 0) or D*H (l > 0) features):

Recurrent layer (summed over layers and directions), and a cell (one step: T = 1, one layer).
For a packed batch, T*B below is the sum of the sequence lengths (only active rows are work);
the dependent steps stay T, the longest sequence:

* FLOPs fwd = sum 2*T*B*(I_l + H)*G*H    (the input and recurrent matmuls; gate arithmetic
  is O(T*B*G*H) and left out); bwd = 2 * fwd (the data and the weight gradients);
  fwd+bwd = 3 * fwd.
* bytes fwd = s * (weights + inputs + outputs), where weights = sum G*H*(I_l + H) + 2*G*H
  (biases), inputs = sum T*B*I_l plus the initial states, outputs = sum T*B*D*H plus the final
  states: the least a forward must read and write.
* bytes bwd = s * (2*weights (read W, write dW) + 2*inputs (read x, write dx) + outputs (read dy)
  + saved), saved = sum T*B*G*H: the gate activations the backward reads.
* bytes fwd+bwd = bytes fwd + bytes bwd + s * saved (the forward writes what the backward reads).

Clip-by-global-norm over N gradient elements: the norm reads every gradient once and the scale
reads and writes it once: bytes = 3*N*s.  Its arithmetic (about 3 flops per element) is not
matmul work, so its floor is bytes / bandwidth.

The sequential bound: a recurrence is sequential (step t needs step t-1), so a layer at small
batch is bound by its dependent steps, not by FLOPs or bytes.  ``dependent_steps`` counts them
(T per layer and pass: a stack's layers run one after another, the two directions of a
bidirectional layer are independent; fwd+bwd = 2 passes; a cell 1 step; the clip 0), and
``bench/step_cost.py`` measures the cheapest dependent step on the device (an empty resident
loop: a store, a barrier and a load per step).  On CPU it is not measured: the bound is left out
and the run's metadata says so (``hardware.step_us`` None).

What the floor leaves out: W_hh is counted once, although a kernel that cannot keep it on chip
re-reads it every step; a step's own matmul latency is not in the sequential bound.
"""
import torch

from . import step_cost
from .timing import device_time

CPU_STEP_NOTE = "not measured on CPU: the sequential bound is left out of the floor"

GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def layer_model(mode, T, B, I, H, layers=1, bidirectional=False, rows=None):
    """{'fwd': (flops, bytes per element size), 'bwd': ..., 'fwd+bwd': ...} of a recurrent
    layer stack; multiply the second entry by the element size for bytes.  ``rows``: the
    (step, sequence) pairs computed, T*B unless given (a packed batch: the sum of lengths)."""
    G = GATES[mode]
    rows = T * B if rows is None else rows
    D = 2 if bidirectional else 1
    flops = weights = inputs = outputs = saved = 0
    states = (2 if mode == "lstm" else 1) * layers * D * B * H      # h0 (and c0)
    for layer in range(layers):
        i_l = I if layer == 0 else D * H
        flops += D * 2 * rows * (i_l + H) * G * H
        weights += D * (G * H * (i_l + H) + 2 * G * H)
        inputs += rows * i_l
        outputs += rows * D * H
        saved += D * rows * G * H
    fwd = weights + inputs + states + outputs + states
    bwd = 2 * weights + 2 * (inputs + states) + outputs + states + saved
    return {"fwd": (flops, fwd), "bwd": (2 * flops, bwd), "fwd+bwd": (3 * flops, fwd + bwd + saved)}


def model(case):
    """{pass: (flops, elements moved)} of a case from :mod:`bench.cases` (a layer stack, a
    one-step cell, or a clip parameter set); bytes = elements * element size."""
    if case.op == "clip":
        return clip_model(case.numel)
    if case.op.endswith("_cell"):
        return layer_model(case.op[: -len("_cell")], 1, case.B, case.I, case.H)
    return layer_model(case.op, case.T, case.B, case.I, case.H, case.layers, case.bidirectional,
                       case.rows)


def dependent_steps(case, pass_):
    """The dependent steps one ``pass_`` of ``case`` takes at the least (see the docstring)."""
    if case.op == "clip":
        return 0
    per_pass = 1 if case.op.endswith("_cell") else case.T * case.layers
    return 2 * per_pass if pass_ == "fwd+bwd" else per_pass


def clip_model(numel):
    """{'clip': (None, elements moved)}: memory-bound, no matmul FLOPs."""
    return {"clip": (None, 3 * numel)}


def measure(device, dtypes, *, copy_elems=None, matmul_n=None, rep_ms=100, step_n=1000):
    """Measure the copy bandwidth (bytes/s), the matmul rate (FLOP/s) of each dtype in
    ``dtypes`` (torch dtypes) and, on CUDA, the cost of one dependent step (``step_n`` steps
    timed) on ``device``; random data, never zeros."""
    cuda = device.type == "cuda"
    if copy_elems is None:
        copy_elems = 2**28 if cuda else 2**24          # 1 GiB / 64 MiB of float32
        if cuda:
            free, _ = torch.cuda.mem_get_info(device)
            copy_elems = min(copy_elems, free // 16)
    if matmul_n is None:
        matmul_n = 8192 if cuda else 1024
    src = torch.randn(copy_elems, device=device)
    dst = torch.randn(copy_elems, device=device)
    ms, _, _ = device_time(lambda: dst.copy_(src), device, rep_ms=rep_ms)
    copy_bytes_s = 2 * copy_elems * src.element_size() / (ms * 1e-3)
    del src, dst
    rates = {}
    for dtype in dtypes:
        a = torch.randn(matmul_n, matmul_n, device=device).to(dtype)
        b = torch.randn(matmul_n, matmul_n, device=device).to(dtype)
        ms, _, _ = device_time(lambda: torch.matmul(a, b), device, rep_ms=rep_ms)
        rates[dtype] = 2 * matmul_n**3 / (ms * 1e-3)
        del a, b
    steps = step_cost.measure(device, steps=step_n, rep_ms=rep_ms)
    return Hardware(copy_bytes_s, rates, copy_elems, matmul_n, steps)


class Hardware:
    """The measured rates, and the floor they give a row."""

    def __init__(self, copy_bytes_s, matmul_flop_s, copy_elems, matmul_n, steps=None):
        self.copy_bytes_s = copy_bytes_s
        self.matmul_flop_s = matmul_flop_s          # {torch dtype: FLOP/s}
        self.copy_elems = copy_elems
        self.matmul_n = matmul_n
        self.steps = steps                          # step_cost.measure's dict, None on CPU
        self.step_s = None if steps is None else steps["loop_s"]

    def sequential_ms(self, steps):
        """``steps`` x the measured cost of one dependent step, in ms; None where unmeasured."""
        if self.step_s is None or not steps:
            return None
        return steps * self.step_s * 1e3

    def floor_ms(self, flops, nbytes, dtype, steps=0):
        """max(flops / matmul rate of ``dtype``, bytes / copy bandwidth, the sequential bound
        of ``steps`` dependent steps where measured), in ms."""
        t = nbytes / self.copy_bytes_s
        if flops:
            t = max(t, flops / self.matmul_flop_s[dtype])
        return max(t * 1e3, self.sequential_ms(steps) or 0.0)

    def as_dict(self, dtype_name):
        return dict(
            copy_gb_s=self.copy_bytes_s / 1e9,
            copy_bytes=2 * self.copy_elems * 4,
            matmul_n=self.matmul_n,
            matmul_tflop_s={dtype_name(d): r / 1e12 for d, r in self.matmul_flop_s.items()},
            step_us=None if self.steps is None else self.steps["loop_s"] * 1e6,
            launch_step_us=None if self.steps is None else self.steps["launch_s"] * 1e6,
            step_note=CPU_STEP_NOTE if self.steps is None else
            f"one dependent step: an empty resident loop, {self.steps['steps']} steps timed",
        )
