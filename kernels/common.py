"""Helpers shared by every kernel family: activations, dtype policy, tile sizes."""
import operator
import os

import torch
import triton
import triton.language as tl

# The dtypes every kernel family (cells, layers, clip) reads and writes.
SUPPORTED_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------- jit helpers
@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    # 2*sigmoid(2x) - 1: no overflow for large |x| (exp(-2x) -> inf gives -1, 0 gives 1).
    return 2.0 / (1.0 + tl.exp(-2.0 * x)) - 1.0


@triton.jit
def dot_acc(acc, a, b, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """acc += a @ b with the operands' own tensor-core path; UPCAST computes in acc's dtype
    (the interpreter multiplies bf16 bit patterns, so bf16 is upcast there only)."""
    if UPCAST:
        a = a.to(acc.dtype)
        b = b.to(acc.dtype)
    return tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=acc.dtype)


@triton.jit
def member(ptr, n, width):
    """``ptr`` moved to member ``program_id(2)`` of a stack of (n, width) tensors: M independent
    recurrences of one shape (the two directions of a layer) run in one launch, each tensor
    stacked on a leading member dimension.  Member 0 is the tensor as passed; the offset is
    64-bit.  Only a pointer that is not None may be moved (guard optional ones by their flag)."""
    return ptr + tl.cast(tl.program_id(2), tl.int64) * n * width


@triton.jit
def fwd_step_ptrs(w_ptr, h0_ptr, y_ptr, t, T, B, G, K):
    """The recurrent operands of a forward step for this program's member (``member``): (W_hh
    (G, K), h_{t-1} (B, K): h0 at t == 0, else slot t-1 of y, y (T, B, K))."""
    y_ptr = member(y_ptr, T * B, K)
    return member(w_ptr, G, K), prev_ptr(t, member(h0_ptr, B, K), y_ptr, B, K), y_ptr


@triton.jit
def bwd_step_ptrs(dy_ptr, w_ptr, dgx_ptr, carry_ptr, T, B, G, H, K):
    """The operands every cell's backward step reads, for this program's member (``member``):
    (dy (T, B, H), W_hh (G, K), dgx (T, B, G), carry (B, K))."""
    return (member(dy_ptr, T * B, H), member(w_ptr, G, K), member(dgx_ptr, T * B, G),
            member(carry_ptr, B, K))


@triton.jit
def tile_index(B, H, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """This program's (batch tile, hidden tile): int64 rows, cols and their masks."""
    rows = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    return rows, cols, rows < B, cols < H


@triton.jit
def add_rows_times_w(acc, a_ptr, w_ptr, rows, cols, mr, mc, N, H,
                     UPCAST: tl.constexpr, PRECISION: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc += A[rows, :N] @ W[:N, cols] with A (., N) and W (N, H) row-major: the backward
    recurrence dgates_{t+1} @ W_hh for this program's tile."""
    for k0 in range(0, N, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        mk = ks < N
        a = tl.load(a_ptr + rows[:, None] * N + ks[None, :], mask=mr[:, None] & mk[None, :], other=0.0)
        w = tl.load(w_ptr + ks[:, None] * H + cols[None, :], mask=mk[:, None] & mc[None, :], other=0.0)
        acc = dot_acc(acc, a, w, UPCAST, PRECISION)
    return acc


@triton.jit
def step_dh(dy_ptr, carry_ptr, dg_ptr, w_ptr, t, T, B, rows, cols, mr, mc, G, H,
            ACC: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
            BLOCK_K: tl.constexpr):
    """dL/dh_t for this program's tile, as ACC: dy_t from dy (T, B, H), plus, below the last
    step, carry (B, H) and the recurrence dgates_{t+1} W_hh from the gate gradients dg (T, B,
    G) and W_hh (G, H)."""
    t64 = tl.cast(t, tl.int64)
    dh = load_tile(dy_ptr + t64 * B * H, rows, cols, H, mr, mc, ACC)
    if t + 1 < T:
        dh += load_tile(carry_ptr, rows, cols, H, mr, mc, ACC)
        dh = add_rows_times_w(dh, dg_ptr + (t64 + 1) * B * G, w_ptr, rows, cols, mr, mc, G, H,
                              UPCAST, PRECISION, BLOCK_K)
    return dh


@triton.jit
def add_rows_times_wt(acc, a_ptr, w_ptr, rows, cols, mr, mc, K,
                      UPCAST: tl.constexpr, PRECISION: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc += A[rows, :K] @ W[cols, :K]^T with A (., K) and W (., K) row-major (``w_ptr`` at the
    gate's first row): the forward recurrence h_{t-1} W_hh^T for one gate of this tile."""
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        mk = ks < K
        a = tl.load(a_ptr + rows[:, None] * K + ks[None, :], mask=mr[:, None] & mk[None, :], other=0.0)
        w = tl.load(w_ptr + cols[None, :] * K + ks[:, None], mask=mk[:, None] & mc[None, :], other=0.0)
        acc = dot_acc(acc, a, w, UPCAST, PRECISION)
    return acc


@triton.jit
def x_times_wt(x_ptr, w_ptr, rows, cols, mr, mc, N, ACC: tl.constexpr, UPCAST: tl.constexpr,
               PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
               BLOCK_K: tl.constexpr):
    """X[rows, :N] @ W[cols, :N]^T with X (., N) and W (., N) row-major, in ACC: one gate block
    of a single step's input projection (a cell fuses it instead of hoisting it)."""
    return add_rows_times_wt(tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC), x_ptr, w_ptr, rows, cols,
                             mr, mc, N, UPCAST, PRECISION, BLOCK_K)


@triton.jit
def gate_input(xp_ptr, x_ptr, w_ih_ptr, t, T, B, rows, cols, mr, mc, G, I, FUSE_X: tl.constexpr,
               ACC: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
               BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """The input term of the gate block at ``cols`` at step t of this program's member: read
    from the hoisted projection xp (T, B, G), or, when FUSE_X (one step: a cell), computed
    here from x (B, I) and W_ih (G, I).  xp is None when FUSE_X, x and W_ih are None
    otherwise."""
    if FUSE_X:
        return x_times_wt(member(x_ptr, T * B, I), member(w_ih_ptr, G, I), rows, cols, mr, mc,
                          I, ACC, UPCAST, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
    else:
        xp_t = member(xp_ptr, T * B, G) + tl.cast(t, tl.int64) * B * G
        return load_tile(xp_t, rows, cols, G, mr, mc, ACC)


@triton.jit
def bias_pair(b_ih_ptr, b_hh_ptr, offs, mask, ACC: tl.constexpr):
    """(b_ih[offs], b_hh[offs]) as (1, BLOCK) rows in ACC."""
    return (tl.load(b_ih_ptr + offs, mask=mask, other=0.0).to(ACC)[None, :],
            tl.load(b_hh_ptr + offs, mask=mask, other=0.0).to(ACC)[None, :])


@triton.jit
def prev_state(t, first_ptr, seq_ptr, rows, cols, B, stride, mask_r, mask_c, ACC: tl.constexpr):
    """State t-1 as ACC: ``first_ptr`` (B, stride) at t == 0, else slot t-1 of ``seq_ptr``
    (T, B, stride).  The initial state is read where it lies: no copy into a sequence buffer."""
    if t == 0:
        v = load_tile(first_ptr, rows, cols, stride, mask_r, mask_c, ACC)
    else:
        v = load_tile(seq_ptr + (tl.cast(t, tl.int64) - 1) * B * stride, rows, cols, stride,
                      mask_r, mask_c, ACC)
    return v


@triton.jit
def prev_ptr(t, first_ptr, seq_ptr, B, stride):
    """Pointer to state t-1: ``first_ptr`` at t == 0, else slot t-1 of ``seq_ptr`` (same dtype)."""
    if t == 0:
        p = first_ptr
    else:
        p = seq_ptr + (tl.cast(t, tl.int64) - 1) * B * stride
    return p


@triton.jit
def load_tile(ptr, rows, cols, row_stride, mask_r, mask_c, ACC: tl.constexpr):
    """Load ptr[rows, cols] (row-major, ``row_stride`` elements per row) as ACC, 0 outside."""
    offs = rows[:, None] * row_stride + cols[None, :]
    return tl.load(ptr + offs, mask=mask_r[:, None] & mask_c[None, :], other=0.0).to(ACC)


@triton.jit
def store_tile(ptr, value, rows, cols, row_stride, mask_r, mask_c):
    offs = rows[:, None] * row_stride + cols[None, :]
    tl.store(ptr + offs, value.to(ptr.dtype.element_ty), mask=mask_r[:, None] & mask_c[None, :])


@triton.jit
def load_gates4(ptr, rows, cols, H, mr, mc, ACC: tl.constexpr):
    """The four gate blocks at ``cols``, ``cols + H``, ... of a (., 4H) row-major buffer as ACC:
    the saved gates of the LSTM (i, f, g, o) and of the GRU (r, z, n, hn)."""
    return (load_tile(ptr, rows, cols, 4 * H, mr, mc, ACC),
            load_tile(ptr, rows, cols + H, 4 * H, mr, mc, ACC),
            load_tile(ptr, rows, cols + 2 * H, 4 * H, mr, mc, ACC),
            load_tile(ptr, rows, cols + 3 * H, 4 * H, mr, mc, ACC))


@triton.jit
def store_gates4(ptr, rows, cols, H, mr, mc, a, b, c, d):
    """Store a, b, c, d as the four gate blocks at ``cols`` of a (., 4H) row-major buffer."""
    store_tile(ptr, a, rows, cols, 4 * H, mr, mc)
    store_tile(ptr, b, rows, cols + H, 4 * H, mr, mc)
    store_tile(ptr, c, rows, cols + 2 * H, 4 * H, mr, mc)
    store_tile(ptr, d, rows, cols + 3 * H, 4 * H, mr, mc)


@triton.jit
def store_gates3(ptr, rows, cols, H, mr, mc, a, b, c):
    """Store a, b, c as the three gate blocks at ``cols`` of a (., 3H) row-major buffer."""
    store_tile(ptr, a, rows, cols, 3 * H, mr, mc)
    store_tile(ptr, b, rows, cols + H, 3 * H, mr, mc)
    store_tile(ptr, c, rows, cols + 2 * H, 3 * H, mr, mc)


@triton.jit
def active_rows(batch_sizes_ptr, t, rows):
    """(BLOCK_B, 1) mask: the rows whose sequence still runs at step t (packed sequences)."""
    return (rows < tl.load(batch_sizes_ptr + t))[:, None]


@triton.jit
def _wt_chunk(w_ptr, gate, cols, ks, mask, H, K):
    """W[gate * H + cols, ks]^T from W (., K) row-major: one gate block's (BLOCK_K, BLOCK_H) chunk."""
    return tl.load(w_ptr + (cols + gate * H)[None, :] * K + ks[:, None], mask=mask, other=0.0)


@triton.jit
def step_preacts(xp_ptr, x_ptr, w_ih_ptr, t, T, B, h_ptr, w_ptr, rows, cols, mr, mc, H, K, I,
                 GATES: tl.constexpr, FUSE_X: tl.constexpr, ACC: tl.constexpr,
                 UPCAST: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr,
                 BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """Step t's gate pre-activations without bias, x_t W_ih^T + h_{t-1} W_hh^T, for the gate
    blocks at ``cols`` of a GATES-gate cell (the input term as ``gate_input`` gives it; W_hh
    (GATES*H, K), h_{t-1} at ``h_ptr`` (., K)).  Each chunk of h_{t-1} is read once for all
    gates.  GATES == 4 (LSTM): the four gates.  GATES == 3 (GRU): (r, z, x_n, h_n), the n
    gate's input and recurrent terms kept apart because r scales h_n alone."""
    G = GATES * H
    a0 = gate_input(xp_ptr, x_ptr, w_ih_ptr, t, T, B, rows, cols, mr, mc, G, I, FUSE_X, ACC,
                    UPCAST, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
    a1 = gate_input(xp_ptr, x_ptr, w_ih_ptr, t, T, B, rows, cols + H, mr, mc, G, I, FUSE_X, ACC,
                    UPCAST, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
    a2 = gate_input(xp_ptr, x_ptr, w_ih_ptr, t, T, B, rows, cols + 2 * H, mr, mc, G, I, FUSE_X,
                    ACC, UPCAST, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
    if GATES == 4:
        a3 = gate_input(xp_ptr, x_ptr, w_ih_ptr, t, T, B, rows, cols + 3 * H, mr, mc, G, I,
                        FUSE_X, ACC, UPCAST, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
    else:
        a3 = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        mk = ks < K
        hk = tl.load(h_ptr + rows[:, None] * K + ks[None, :], mask=mr[:, None] & mk[None, :], other=0.0)
        wmask = mk[:, None] & mc[None, :]
        a0 = dot_acc(a0, hk, _wt_chunk(w_ptr, 0, cols, ks, wmask, H, K), UPCAST, PRECISION)
        a1 = dot_acc(a1, hk, _wt_chunk(w_ptr, 1, cols, ks, wmask, H, K), UPCAST, PRECISION)
        if GATES == 4:
            a2 = dot_acc(a2, hk, _wt_chunk(w_ptr, 2, cols, ks, wmask, H, K), UPCAST, PRECISION)
            a3 = dot_acc(a3, hk, _wt_chunk(w_ptr, 3, cols, ks, wmask, H, K), UPCAST, PRECISION)
        else:
            a3 = dot_acc(a3, hk, _wt_chunk(w_ptr, 2, cols, ks, wmask, H, K), UPCAST, PRECISION)
    return a0, a1, a2, a3


# ----------------------------------------------------------------------------- host policy
def interpreting():
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def acc_dtype(dtype):
    """Accumulation / state dtype: fp64 for fp64, fp32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def tl_dtype(dtype):
    return {torch.float64: tl.float64, torch.float32: tl.float32,
            torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}[dtype]


def dot_flags(dtype, allow_tf32=False):
    """(UPCAST, PRECISION) for tl.dot on ``dtype`` operands.

    fp32 runs in TF32 only when the caller says torch would (``allow_tf32``).  bf16 is upcast
    under the interpreter only (Triton issue 11584: it multiplies the raw bits)."""
    upcast = dtype == torch.bfloat16 and interpreting()
    if dtype == torch.float32 and allow_tf32 and not interpreting():
        return upcast, "tf32"
    return upcast, "ieee"


def check_dtype(dtype):
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"fastcells kernels support float64, float32, float16 and bfloat16, got {dtype}")


MIN_DOT = 16               # tl.dot needs every tile dimension >= 16
SMALL_BATCH = 64           # up to this batch, 16-row batch tiles (more programs per step)
MANY_PROGRAMS = 512        # beyond this many 16x16 tiles a step has parallelism to spare
WIDE_HALF_PROGRAMS = 128   # 16-bit operands: 32-wide hidden tiles once this many programs remain
K_BLOCKS = (64, 32, 16)    # the reduction chunk: the largest that the reduction length fills
STEP_WARPS = 4


def step_tiles(batch, hidden, k, dtype=torch.float32):
    """Tile sizes (BLOCK_B, BLOCK_H, BLOCK_K, num_warps) for a step kernel.

    tl.dot needs every tile dimension >= 16.  Small tiles spread a step over many programs
    (one step is latency-bound: the more SMs read W_hh at once, the sooner it ends); 16-bit
    operands take 32-wide hidden tiles while that still leaves WIDE_HALF_PROGRAMS programs
    (the thresholds come from bench/tile_sweep.py's rows in bench/results)."""
    block_b = MIN_DOT if batch <= SMALL_BATCH else 2 * MIN_DOT
    programs = triton.cdiv(batch, block_b) * triton.cdiv(hidden, MIN_DOT)
    block_h = MIN_DOT if programs <= MANY_PROGRAMS else 2 * MIN_DOT
    if dtype in (torch.float16, torch.bfloat16) and programs >= WIDE_HALF_PROGRAMS:
        block_h = 2 * MIN_DOT
    block_k = next(b for b in K_BLOCKS if k >= b or b == MIN_DOT)
    return block_b, block_h, block_k, STEP_WARPS


_getters = {}   # id(kernel.arg_names) -> (that list, an itemgetter of its names): host time per call


def _arguments(kernel, args):
    """The kernel's arguments in its order from ``args``: a name per value, the kernel's
    parameters among them and possibly names it does not take (another cell's tensors), which
    are left out.  An absent tensor is None in ``args``; a parameter missing from ``args`` is
    a KeyError."""
    names = kernel.arg_names
    entry = _getters.get(id(names))
    if entry is None:   # the entry keeps the list alive, so its id stays its own
        entry = _getters[id(names)] = (names, operator.itemgetter(*names))
    return entry[1](args)


def launch_once(kernel, grid, args):
    """``kernel[grid]`` over the parameters it takes from ``args`` (see ``_arguments``; the
    launch option ``num_warps`` from there too), called through ``kernel.run``: one Python
    frame less than ``kernel[grid](...)``."""
    kernel.run(*_arguments(kernel, args), grid=grid, warmup=False, num_warps=args["num_warps"])


def bound_launch(kernel, grid, args, varying="t"):
    """``kernel[grid]`` with every argument but ``varying`` bound once: returns
    ``launch(value)``.  The arguments go positionally, in the kernel's order, each kernel
    taking from ``args`` the parameters it has (``_arguments``), and ``num_warps`` as the launch
    option; Triton's launcher merges and re-binds keyword arguments at every call, which a loop
    of T steps pays T times.  ``launch`` calls ``kernel.run`` itself, what ``kernel[grid](...)``
    calls through a lambda: one Python frame less per launch."""
    pos = list(_arguments(kernel, dict(args, **{varying: None})))
    opts = dict(num_warps=args["num_warps"], grid=grid, warmup=False)
    at = kernel.arg_names.index(varying)
    run = kernel.run

    def launch(value):
        pos[at] = value
        run(*pos, **opts)
    return launch
