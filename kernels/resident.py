"""Resident recurrent kernels: the whole time loop of one layer-direction in one launch.

Each program owns a batch tile (BLOCK_B = 16 rows, masked: tl.dot needs 16) and the WHOLE hidden
state (BLOCK_H = H rounded up to a power of two, at least 16), so a step never needs another
program's output and no program waits for another: the kernels run under Triton's interpreter.

Forward, t = 0..T-1: the state h_{t-1} (and the LSTM's c_{t-1}) stays in registers for the state
update; the recurrent matmul h_{t-1} W_hh^T streams W_hh from memory in BLOCK_K x BLOCK_H chunks
per gate and reads h_{t-1} back from ``y`` slot t-1 (``h0`` at t = 0), which this program wrote at
the step before (a register tile cannot be sliced along K).  Backward, t = T-1..0: dh_t = dy_t +
carry + dgates_{t+1} W_hh reads dgates_{t+1} back from ``dgx`` (``dgh`` for the GRU) the same
way; carry (and the LSTM's dc) stays in registers and is stored once at the end.  A
``tl.debug_barrier()`` at the end of every step makes one step's stores visible to every thread
of the program before the next step loads them.

The buffers are exactly those of the step loop in ``recurrence.py`` (``y``, ``cs``, ``saved``
forward, the initial states read where they lie; ``dgx``, ``dgh``, ``carry``, ``dc`` backward,
started from zero and ``dcn``), in the same layouts and dtypes, with the same rounding (the
state is rounded to the storage dtype each step, as the step kernels read it back from ``y``),
so a resident forward can feed a step backward and the reverse, and the hoisted GEMMs around the
loops are unchanged.  The per-cell math (bias, activations, state update, gate gradients, ended
rows) is the step kernels' own jit helpers (``lstm_cell``, ``lstm_cell_grad``, ...).

Not covered (``supports_resident`` says no; the step path runs them): the projected LSTM
(``w_hr``: its projection is a separate matmul per step), and H > ``MAX_H``; a single step
(T == 1, a cell) keeps the step kernel, which fuses its input projection (``dispatch``).  Off by default: see
``kernels/dispatch.py``.
"""
import torch
import triton
import triton.language as tl

from .common import (SUPPORTED_DTYPES, acc_dtype, active_rows, add_rows_times_w,
                     add_rows_times_wt, check_dtype, dot_flags, load_gates4, load_tile, prev_ptr,
                     prev_state, store_gates3, store_gates4, store_tile, tile_index, tl_dtype)
from .gru import gru_cell, gru_cell_grad
from .lstm import lstm_cell, lstm_cell_grad
from .rnn import rnn_cell, rnn_cell_grad

# The whole hidden state of a 16-row tile in registers: the LSTM forward holds four gate
# accumulators, h and c, each 16 x BLOCK_H in fp32: 96 KiB at H = 256 over 8 warps (96 registers
# a thread), the most that leaves room for the W_hh chunks without spilling.
MAX_H = 256
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
SAVED = {"lstm": 4, "gru": 4, "rnn_tanh": 0, "rnn_relu": 0}
# (BLOCK_B, BLOCK_K, num_warps) forced for every resident launch, or None: for tile sweeps.
TILE_OVERRIDE = None


def supports_resident(mode, B, H, K, dtype, proj):
    """True where the resident kernel can run this layer: no projection (K == H), 1 <= H <=
    MAX_H (the whole hidden state of a batch tile lives in one program's registers), a kernel
    dtype.  B is not limited: batch tiles are independent programs."""
    return reason_not_resident(mode, B, H, K, dtype, proj) is None


def reason_not_resident(mode, B, H, K, dtype, proj):
    """Why the resident kernel cannot run this layer, or None when it can."""
    if mode not in GATES:
        return f"unknown mode {mode!r}"
    if proj or K != H:
        return "projected LSTM (proj_size > 0): the step path projects each step"
    if not 1 <= H <= MAX_H:
        return f"hidden size {H} outside 1..{MAX_H} (the whole hidden state must fit in registers)"
    if dtype not in SUPPORTED_DTYPES:
        return f"dtype {dtype} has no kernel"
    return None


def resident_tiles(H, dtype):
    """(BLOCK_B, BLOCK_H, BLOCK_K, num_warps).  Untuned (the kernel measured slower than the
    step chain on an H200 and is off: kernels/dispatch.py): the smallest batch tile tl.dot
    allows (more programs at small B), the whole hidden state, K chunks that keep a W_hh chunk
    per gate at <= 32 x BLOCK_H."""
    block_h = max(16, triton.next_power_of_2(H))
    if TILE_OVERRIDE is not None:
        block_b, block_k, warps = TILE_OVERRIDE
        return block_b, block_h, min(block_k, block_h), warps
    warps = 4 if block_h <= 64 else 8
    return 16, block_h, min(32, block_h), warps


def _config(B, H, dtype, allow_tf32):
    block_b, block_h, block_k, warps = resident_tiles(H, dtype)
    if allow_tf32 is None:
        allow_tf32 = torch.backends.cudnn.allow_tf32   # as the step path: cuDNN's flag
    upcast, precision = dot_flags(dtype, allow_tf32)
    grid = (triton.cdiv(B, block_b),)
    meta = dict(ACC=tl_dtype(acc_dtype(dtype)), UPCAST=upcast, PRECISION=precision,
                BLOCK_B=block_b, BLOCK_H=block_h, BLOCK_K=block_k, num_warps=warps)
    return grid, meta


# ----------------------------------------------------------------------------- jit helpers
@triton.jit
def _gate_rec(acc, h_prev, w_ptr, gate, rows, cols, mr, mc, H,
              UPCAST: tl.constexpr, PRECISION: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc += h_{t-1} W_hh[gate]^T, W_hh (G*H, H) row-major."""
    return add_rows_times_wt(acc, h_prev, w_ptr + gate * H * H, rows, cols, mr, mc, H,
                             UPCAST, PRECISION, BLOCK_K)


@triton.jit
def _gate_in_rec(xp_t, h_prev, w_ptr, gate, rows, cols, mr, mc, G, H, ACC: tl.constexpr,
                 UPCAST: tl.constexpr, PRECISION: tl.constexpr, BLOCK_K: tl.constexpr):
    """xp_t[:, gate] + h_{t-1} W_hh[gate]^T in ACC: one gate's pre-activation without bias."""
    return _gate_rec(load_tile(xp_t, rows, cols + gate * H, G, mr, mc, ACC), h_prev, w_ptr, gate,
                     rows, cols, mr, mc, H, UPCAST, PRECISION, BLOCK_K)


@triton.jit
def _step_sizes(B, H, GATES: tl.constexpr):
    """(G, elements per step of a (T, B, G) buffer, of a (T, B, H) buffer), the steps in int64."""
    b64 = tl.cast(B, tl.int64)   # B may arrive as the constant 1 (Triton specializes it)
    return GATES * H, b64 * (GATES * H), b64 * H


@triton.jit
def _dh(dy_t, carry, dg_next, w_ptr, t, T, rows, cols, mr, mc, G, H, ACC: tl.constexpr,
        UPCAST: tl.constexpr, PRECISION: tl.constexpr, BLOCK_K: tl.constexpr):
    """dL/dh_t = dy_t + carry + dgates_{t+1} W_hh, the last two from step t+1 only."""
    dh = load_tile(dy_t, rows, cols, H, mr, mc, ACC)
    if t + 1 < T:
        dh += carry
        dh = add_rows_times_w(dh, dg_next, w_ptr, rows, cols, mr, mc, G, H, UPCAST, PRECISION,
                              BLOCK_K)
    return dh


# ----------------------------------------------------------------------------- forward
@triton.jit(do_not_specialize=["T"])
def _lstm_fwd_resident_kernel(
    xp_ptr,    # (T, B, 4H) x_t W_ih^T, gate order i, f, g, o
    w_ptr,     # (4H, H) W_hh, row-major
    b_ih_ptr,  # (4H,) (read when HAS_BIAS)
    b_hh_ptr,  # (4H,) (read when HAS_BIAS)
    h0_ptr,    # (B, H) h_{-1}
    c0_ptr,    # (B, H) c_{-1}, any float dtype
    y_ptr,     # (T, B, H) out: h_t; slot t-1 read back as h_{t-1}
    cs_ptr,    # (T, B, H) ACC out: c_t
    saved_ptr,  # (T, B, 4H) out: activated gates i, f, g, o
    batch_sizes_ptr,     # (T,) int32 rows active at each step (HAS_BATCH_SIZES)
    T, B, H,
    HAS_BIAS: tl.constexpr, HAS_BATCH_SIZES: tl.constexpr,
    ACC: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows, cols, mr, mc = tile_index(B, H, BLOCK_B, BLOCK_H)
    G, sg, sh = _step_sizes(B, H, 4)   # sg: a step of xp / saved, sh: of y / cs
    h = load_tile(h0_ptr, rows, cols, H, mr, mc, ACC)
    c = load_tile(c0_ptr, rows, cols, H, mr, mc, ACC)
    for t in range(T):
        xp_t = xp_ptr + t * sg
        h_prev = prev_ptr(t, h0_ptr, y_ptr, B, H)
        acc_i = _gate_in_rec(xp_t, h_prev, w_ptr, 0, rows, cols, mr, mc, G, H, ACC, UPCAST,
                             PRECISION, BLOCK_K)
        acc_f = _gate_in_rec(xp_t, h_prev, w_ptr, 1, rows, cols, mr, mc, G, H, ACC, UPCAST,
                             PRECISION, BLOCK_K)
        acc_g = _gate_in_rec(xp_t, h_prev, w_ptr, 2, rows, cols, mr, mc, G, H, ACC, UPCAST,
                             PRECISION, BLOCK_K)
        acc_o = _gate_in_rec(xp_t, h_prev, w_ptr, 3, rows, cols, mr, mc, G, H, ACC, UPCAST,
                             PRECISION, BLOCK_K)
        i, f, g, o, c_new, h_new = lstm_cell(acc_i, acc_f, acc_g, acc_o, c, b_ih_ptr, b_hh_ptr,
                                             cols, mc, H, HAS_BIAS, ACC)
        if HAS_BATCH_SIZES:
            active = active_rows(batch_sizes_ptr, t, rows)
            c_new = tl.where(active, c_new, c)
            h_new = tl.where(active, h_new, h)
        c = c_new
        # The step kernels read h back from y: round it to the storage dtype the same way.
        h = h_new.to(y_ptr.dtype.element_ty).to(ACC)
        store_tile(cs_ptr + t * sh, c, rows, cols, H, mr, mc)
        store_tile(y_ptr + t * sh, h, rows, cols, H, mr, mc)
        store_gates4(saved_ptr + t * sg, rows, cols, H, mr, mc, i, f, g, o)
        tl.debug_barrier()   # h_t is read back (other threads' columns) by the next step


@triton.jit(do_not_specialize=["T"])
def _gru_fwd_resident_kernel(
    xp_ptr,    # (T, B, 3H) x_t W_ih^T, gate order r, z, n
    w_ptr,     # (3H, H) W_hh, row-major
    b_ih_ptr,  # (3H,) (read when HAS_BIAS)
    b_hh_ptr,  # (3H,) (read when HAS_BIAS)
    h0_ptr,    # (B, H) h_{-1}
    c0_ptr,    # unused (the uniform signature)
    y_ptr,     # (T, B, H) out: h_t; slot t-1 read back as h_{t-1}
    cs_ptr,    # unused
    saved_ptr,  # (T, B, 4H) out: r, z, n and hn = h W_hn^T + b_hn
    batch_sizes_ptr,     # (T,) int32 rows active at each step (HAS_BATCH_SIZES)
    T, B, H,
    HAS_BIAS: tl.constexpr, HAS_BATCH_SIZES: tl.constexpr,
    ACC: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows, cols, mr, mc = tile_index(B, H, BLOCK_B, BLOCK_H)
    G, sg, sh = _step_sizes(B, H, 3)
    h = load_tile(h0_ptr, rows, cols, H, mr, mc, ACC)
    for t in range(T):
        xp_t = xp_ptr + t * sg
        h_prev = prev_ptr(t, h0_ptr, y_ptr, B, H)
        acc_r = _gate_in_rec(xp_t, h_prev, w_ptr, 0, rows, cols, mr, mc, G, H, ACC, UPCAST,
                             PRECISION, BLOCK_K)
        acc_z = _gate_in_rec(xp_t, h_prev, w_ptr, 1, rows, cols, mr, mc, G, H, ACC, UPCAST,
                             PRECISION, BLOCK_K)
        x_n = load_tile(xp_t, rows, cols + 2 * H, G, mr, mc, ACC)
        h_n = _gate_rec(tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC), h_prev, w_ptr, 2,
                        rows, cols, mr, mc, H, UPCAST, PRECISION, BLOCK_K)
        r, z, n, h_n, h_new = gru_cell(acc_r, acc_z, x_n, h_n, h, b_ih_ptr, b_hh_ptr, cols, mc,
                                       H, HAS_BIAS, ACC)
        if HAS_BATCH_SIZES:
            h_new = tl.where(active_rows(batch_sizes_ptr, t, rows), h_new, h)
        h = h_new.to(y_ptr.dtype.element_ty).to(ACC)
        store_tile(y_ptr + t * sh, h, rows, cols, H, mr, mc)
        store_gates4(saved_ptr + t * 4 * sh, rows, cols, H, mr, mc, r, z, n, h_n)
        tl.debug_barrier()


@triton.jit(do_not_specialize=["T"])
def _rnn_fwd_resident_kernel(
    xp_ptr,    # (T, B, H) x_t W_ih^T
    w_ptr,     # (H, H) W_hh, row-major
    b_ih_ptr,  # (H,) (read when HAS_BIAS)
    b_hh_ptr,  # (H,) (read when HAS_BIAS)
    h0_ptr,    # (B, H) h_{-1}
    c0_ptr,    # unused
    y_ptr,     # (T, B, H) out: h_t; slot t-1 read back as h_{t-1}
    cs_ptr,    # unused
    saved_ptr,  # unused: the backward pass needs only h_t
    batch_sizes_ptr,     # (T,) int32 rows active at each step (HAS_BATCH_SIZES)
    T, B, H,
    HAS_BIAS: tl.constexpr, HAS_BATCH_SIZES: tl.constexpr,
    ACC: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    RELU: tl.constexpr,
):
    rows, cols, mr, mc = tile_index(B, H, BLOCK_B, BLOCK_H)
    G, sg, sh = _step_sizes(B, H, 1)
    h = load_tile(h0_ptr, rows, cols, H, mr, mc, ACC)
    for t in range(T):
        h_prev = prev_ptr(t, h0_ptr, y_ptr, B, H)
        acc = _gate_in_rec(xp_ptr + t * sg, h_prev, w_ptr, 0, rows, cols, mr, mc, G, H, ACC,
                           UPCAST, PRECISION, BLOCK_K)
        h_new = rnn_cell(acc, b_ih_ptr, b_hh_ptr, cols, mc, HAS_BIAS, RELU, ACC)
        if HAS_BATCH_SIZES:
            h_new = tl.where(active_rows(batch_sizes_ptr, t, rows), h_new, h)
        h = h_new.to(y_ptr.dtype.element_ty).to(ACC)
        store_tile(y_ptr + t * sh, h, rows, cols, H, mr, mc)
        tl.debug_barrier()


# ----------------------------------------------------------------------------- backward
@triton.jit
def _dc_last(dcn_ptr, rows, cols, H, mr, mc, HAS_DCN: tl.constexpr, ACC: tl.constexpr,
             BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """dL/dc_{T-1}: ``dcn`` when given, else zero."""
    if HAS_DCN:
        dc = load_tile(dcn_ptr, rows, cols, H, mr, mc, ACC)
    else:
        dc = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    return dc


@triton.jit(do_not_specialize=["T"])
def _lstm_bwd_resident_kernel(
    dy_ptr,    # (T, B, H) dL/dh_t from the output
    w_ptr,     # (4H, H) W_hh
    saved_ptr,  # (T, B, 4H) activated gates from the forward pass
    h0_ptr,    # unused by the LSTM (the uniform signature)
    y_ptr,     # unused by the LSTM
    c0_ptr,    # (B, H) c_{-1}
    cs_ptr,    # (T, B, H) cell states c_t, ACC
    dcn_ptr,   # (B, H) dL/dc_{T-1} (read when HAS_DCN; else zero)
    dgx_ptr,   # (T, B, 4H) out: dL/d(gate pre-activations); slot t+1 read back by step t
    dgh_ptr,   # unused (same as dgx)
    carry_ptr,  # (B, H) ACC out: dL/dh_{-1} passed through rows ended at step 0
    dc_ptr,    # (B, H) ACC out: dL/dc_{-1}
    batch_sizes_ptr,     # (T,) int32 rows active at each step (HAS_BATCH_SIZES)
    T, B, H,
    HAS_BATCH_SIZES: tl.constexpr, HAS_DCN: tl.constexpr,
    ACC: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows, cols, mr, mc = tile_index(B, H, BLOCK_B, BLOCK_H)
    G, sg, sh = _step_sizes(B, H, 4)
    carry = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    dc = _dc_last(dcn_ptr, rows, cols, H, mr, mc, HAS_DCN, ACC, BLOCK_B, BLOCK_H)
    for s in range(T):
        t = T - 1 - s
        dh = _dh(dy_ptr + t * sh, carry, dgx_ptr + (t + 1) * sg, w_ptr, t, T, rows, cols, mr, mc,
                 G, H, ACC, UPCAST, PRECISION, BLOCK_K)
        i, f, g, o = load_gates4(saved_ptr + t * sg, rows, cols, H, mr, mc, ACC)
        c = load_tile(cs_ptr + t * sh, rows, cols, H, mr, mc, ACC)
        c_prev = prev_state(t, c0_ptr, cs_ptr, rows, cols, B, H, mr, mc, ACC)
        d_i, d_f, d_g, d_o, dc, carry = lstm_cell_grad(dh, dc, i, f, g, o, c, c_prev, batch_sizes_ptr, t,
                                                       rows, HAS_BATCH_SIZES)
        store_gates4(dgx_ptr + t * sg, rows, cols, H, mr, mc, d_i, d_f, d_g, d_o)
        tl.debug_barrier()   # dgates_t is read back (all of G) by the next step
    store_tile(carry_ptr, carry, rows, cols, H, mr, mc)
    store_tile(dc_ptr, dc, rows, cols, H, mr, mc)


@triton.jit(do_not_specialize=["T"])
def _gru_bwd_resident_kernel(
    dy_ptr,    # (T, B, H) dL/dh_t from the output
    w_ptr,     # (3H, H) W_hh
    saved_ptr,  # (T, B, 4H) r, z, n, hn from the forward pass
    h0_ptr,    # (B, H) h_{-1}
    y_ptr,     # (T, B, H) h_t (slot t-1 is h_{t-1})
    c0_ptr,    # unused by the GRU
    cs_ptr,    # unused by the GRU
    dcn_ptr,   # unused by the GRU
    dgx_ptr,   # (T, B, 3H) out: dL/d(x-side pre-activations) r, z, n
    dgh_ptr,   # (T, B, 3H) out: dL/d(h-side pre-activations) r, z, hn; slot t+1 read back
    carry_ptr,  # (B, H) ACC out: dL/dh_{-1} through z (and ended rows) at step 0
    dc_ptr,    # unused by the GRU
    batch_sizes_ptr,     # (T,) int32 rows active at each step (HAS_BATCH_SIZES)
    T, B, H,
    HAS_BATCH_SIZES: tl.constexpr, HAS_DCN: tl.constexpr,
    ACC: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows, cols, mr, mc = tile_index(B, H, BLOCK_B, BLOCK_H)
    G, sg, sh = _step_sizes(B, H, 3)
    carry = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    for s in range(T):
        t = T - 1 - s
        dh = _dh(dy_ptr + t * sh, carry, dgh_ptr + (t + 1) * sg, w_ptr, t, T, rows, cols, mr, mc,
                 G, H, ACC, UPCAST, PRECISION, BLOCK_K)
        r, z, n, h_n = load_gates4(saved_ptr + t * 4 * sh, rows, cols, H, mr, mc, ACC)
        hp = prev_state(t, h0_ptr, y_ptr, rows, cols, B, H, mr, mc, ACC)
        d_r, d_z, d_npre, d_hn, carry = gru_cell_grad(dh, r, z, n, h_n, hp, batch_sizes_ptr, t, rows,
                                                      HAS_BATCH_SIZES)
        store_gates3(dgx_ptr + t * sg, rows, cols, H, mr, mc, d_r, d_z, d_npre)
        store_gates3(dgh_ptr + t * sg, rows, cols, H, mr, mc, d_r, d_z, d_hn)
        tl.debug_barrier()
    store_tile(carry_ptr, carry, rows, cols, H, mr, mc)


@triton.jit(do_not_specialize=["T"])
def _rnn_bwd_resident_kernel(
    dy_ptr,    # (T, B, H) dL/dh_t from the output
    w_ptr,     # (H, H) W_hh
    saved_ptr,  # unused
    h0_ptr,    # unused
    y_ptr,     # (T, B, H) h_t
    c0_ptr,    # unused
    cs_ptr,    # unused
    dcn_ptr,   # unused
    dgx_ptr,   # (T, B, H) out: dL/d(pre-activation); slot t+1 read back by step t
    dgh_ptr,   # unused (same as dgx)
    carry_ptr,  # (B, H) ACC out: dL/dh_{-1} passed through rows ended at step 0
    dc_ptr,    # unused
    batch_sizes_ptr,     # (T,) int32 rows active at each step (HAS_BATCH_SIZES)
    T, B, H,
    HAS_BATCH_SIZES: tl.constexpr, HAS_DCN: tl.constexpr,
    ACC: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    RELU: tl.constexpr,
):
    rows, cols, mr, mc = tile_index(B, H, BLOCK_B, BLOCK_H)
    G, sg, sh = _step_sizes(B, H, 1)
    carry = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    for s in range(T):
        t = T - 1 - s
        dh = _dh(dy_ptr + t * sh, carry, dgx_ptr + (t + 1) * sg, w_ptr, t, T, rows, cols, mr, mc,
                 G, H, ACC, UPCAST, PRECISION, BLOCK_K)
        h = load_tile(y_ptr + t * sh, rows, cols, H, mr, mc, ACC)
        d, carry = rnn_cell_grad(dh, h, batch_sizes_ptr, t, rows, RELU, HAS_BATCH_SIZES)
        store_tile(dgx_ptr + t * sg, d, rows, cols, H, mr, mc)
        tl.debug_barrier()
    store_tile(carry_ptr, carry, rows, cols, H, mr, mc)


FWD = {"lstm": (_lstm_fwd_resident_kernel, {}), "gru": (_gru_fwd_resident_kernel, {}),
       "rnn_tanh": (_rnn_fwd_resident_kernel, {"RELU": False}),
       "rnn_relu": (_rnn_fwd_resident_kernel, {"RELU": True})}
BWD = {"lstm": (_lstm_bwd_resident_kernel, {}), "gru": (_gru_bwd_resident_kernel, {}),
       "rnn_tanh": (_rnn_bwd_resident_kernel, {"RELU": False}),
       "rnn_relu": (_rnn_bwd_resident_kernel, {"RELU": True})}


# ----------------------------------------------------------------------------- launchers
def _check(mode, B, H, K, dtype):
    check_dtype(dtype)
    why = reason_not_resident(mode, B, H, K, dtype, proj=False)
    if why is not None and H != 0:   # H == 0: nothing to launch (handled below)
        raise ValueError(f"resident recurrence cannot run this layer: {why}")


def resident_forward(mode, b, T, B, H, K, batch_sizes_dev, has_bias, allow_tf32=None):
    """What the forward ``steps(b)`` of ``recurrence.layer_forward`` does for a layer without
    projection and with T >= 1 steps from the hoisted projection, in one launch: writes ``y``,
    ``cs`` (LSTM) and ``saved`` (LSTM, GRU).

    ``b``: xp (T, B, G*H), w (G*H, H), b1, b2 (G*H,) when ``has_bias``, h0 (B, H), c0 (B, H)
    for the LSTM; outputs y (T, B, H), cs (T, B, H) ACC (LSTM), saved (T, B, 4H) (LSTM, GRU).
    ``batch_sizes_dev``: (T,) int32 rows active per step (packed batches) or None.
    ``allow_tf32``: fp32 matmuls in TF32; None follows ``torch.backends.cudnn.allow_tf32`` as
    the step path does."""
    y = b["y"]
    _check(mode, B, H, K, y.dtype)
    if B == 0 or T == 0:
        return
    if H == 0:
        y.copy_(b["h0"].expand(T, B, K))   # nothing evolves
        return
    grid, meta = _config(B, H, y.dtype, allow_tf32)
    kernel, extra = FWD[mode]
    kernel[grid](
        xp_ptr=b["xp"], w_ptr=b["w"], b_ih_ptr=b.get("b1", y), b_hh_ptr=b.get("b2", y),
        h0_ptr=b["h0"], c0_ptr=b.get("c0", y), y_ptr=y, cs_ptr=b.get("cs", y),
        saved_ptr=b.get("saved", y), batch_sizes_ptr=y if batch_sizes_dev is None else batch_sizes_dev, T=T, B=B, H=H,
        HAS_BIAS=has_bias, HAS_BATCH_SIZES=batch_sizes_dev is not None, **meta, **extra,
    )


def resident_backward(mode, b, T, B, H, K, batch_sizes_dev, allow_tf32=None):
    """What the backward ``steps(b)`` of ``recurrence.layer_backward_steps`` does for a layer
    without projection, in one launch: writes all of ``dgx`` (and ``dgh`` for the GRU), leaves in
    ``carry`` dL/dh_{-1} minus the term dgh[0] @ W_hh (added by ``layer_grads``) and in ``dc``
    dL/dc_{-1}.  At t = T-1 the carry is zero and dL/dc_t is ``dcn`` (zero when absent).

    ``b``: dy (T, B, H), w (G*H, H), h0 (B, H), y (T, B, H), saved (LSTM, GRU), c0 (B, H) and
    cs (T, B, H) ACC (LSTM), dcn (B, H) optional (LSTM); outputs dgx, dgh (GRU) (T, B, G*H),
    carry (B, H) ACC, dc (B, H) ACC (LSTM)."""
    carry, dc, dgx = b["carry"], b.get("dc"), b["dgx"]
    dgh = b.get("dgh", dgx)
    _check(mode, B, H, K, dgx.dtype)
    has_dcn = "dcn" in b
    if B == 0 or H == 0 or T == 0:
        for buf in (dgx, dgh, carry, dc):
            if buf is not None:
                buf.zero_()
        if dc is not None and has_dcn:
            dc.copy_(b["dcn"])
        return
    grid, meta = _config(B, H, dgx.dtype, allow_tf32)
    kernel, extra = BWD[mode]
    kernel[grid](
        dy_ptr=b["dy"], w_ptr=b["w"], saved_ptr=b.get("saved", dgx), h0_ptr=b["h0"],
        y_ptr=b["y"], c0_ptr=b.get("c0", dgx), cs_ptr=b.get("cs", dgx),
        dcn_ptr=b.get("dcn", dgx), dgx_ptr=dgx, dgh_ptr=dgh, carry_ptr=carry,
        dc_ptr=carry if dc is None else dc, batch_sizes_ptr=dgx if batch_sizes_dev is None else batch_sizes_dev,
        T=T, B=B, H=H, HAS_BATCH_SIZES=batch_sizes_dev is not None, HAS_DCN=has_dcn, **meta, **extra,
    )
