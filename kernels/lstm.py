"""Fused LSTM step kernels.

Forward, one launch per step: gates = x_t W_ih^T + h_{t-1} W_hh^T + b_ih + b_hh (order i, f, g, o);
i, f, o = sigmoid, g = tanh; c_t = f c_{t-1} + i g; h_t = o tanh(c_t).  x_t W_ih^T comes from the
hoisted projection of the whole sequence, or, for a single step (a cell: FUSE_X), is computed
here, so a cell is one launch.
Backward, one launch per step: dh_t = dy_t + dgates_{t+1} W_hh + carry, the gate derivatives and
dc_{t-1} = dc_t f.  Each program owns a (batch tile, hidden tile) and all four gates of it, so the
state update never leaves the program and no program waits for another.  The initial states are
read where the caller keeps them (step 0), never copied into the sequence buffers.
"""
import triton
import triton.language as tl

from .common import (active_rows, bias_pair, bwd_step_ptrs, fwd_step_ptrs, load_gates4,
                     load_tile, member, prev_state, sigmoid, step_dh, step_preacts,
                     store_gates4, store_tile, tanh, tile_index)
from .layer import CellKernels


@triton.jit
def lstm_cell(acc_i, acc_f, acc_g, acc_o, c_prev, b_ih_ptr, b_hh_ptr, cols, mc, H,
              HAS_BIAS: tl.constexpr, ACC: tl.constexpr):
    """One LSTM update from the gate pre-activations without bias (gate blocks i, f, g, o of the
    hidden columns ``cols``): (i, f, g, o, c_t, h_t)."""
    if HAS_BIAS:
        bi, bh = bias_pair(b_ih_ptr, b_hh_ptr, cols, mc, ACC)
        acc_i += bi + bh
        bi, bh = bias_pair(b_ih_ptr, b_hh_ptr, cols + H, mc, ACC)
        acc_f += bi + bh
        bi, bh = bias_pair(b_ih_ptr, b_hh_ptr, cols + 2 * H, mc, ACC)
        acc_g += bi + bh
        bi, bh = bias_pair(b_ih_ptr, b_hh_ptr, cols + 3 * H, mc, ACC)
        acc_o += bi + bh
    i = sigmoid(acc_i)
    f = sigmoid(acc_f)
    g = tanh(acc_g)
    o = sigmoid(acc_o)
    c = f * c_prev + i * g
    return i, f, g, o, c, o * tanh(c)


@triton.jit
def lstm_cell_grad(dh, dc_in, i, f, g, o, c, c_prev, batch_sizes_ptr, t, rows, HAS_BATCH_SIZES: tl.constexpr):
    """The gradients of one LSTM update from dL/dh_t (recurrence included) and dL/dc_t:
    (d_i, d_f, d_g, d_o pre-activation gradients, dL/dc_{t-1}, carry).  Rows whose sequence has
    ended at t (HAS_BATCH_SIZES) get zero gate gradients and pass dh on in ``carry`` and dc_t on."""
    tc = tanh(c)
    dc = dc_in + dh * o * (1.0 - tc * tc)
    d_i = dc * g * i * (1.0 - i)
    d_f = dc * c_prev * f * (1.0 - f)
    d_g = dc * i * (1.0 - g * g)
    d_o = dh * tc * o * (1.0 - o)
    dc_prev = dc * f
    carry = tl.zeros_like(dh)
    if HAS_BATCH_SIZES:
        active = active_rows(batch_sizes_ptr, t, rows)
        d_i = tl.where(active, d_i, 0.0)
        d_f = tl.where(active, d_f, 0.0)
        d_g = tl.where(active, d_g, 0.0)
        d_o = tl.where(active, d_o, 0.0)
        dc_prev = tl.where(active, dc_prev, dc_in)
        carry = tl.where(active, carry, dh)
    return d_i, d_f, d_g, d_o, dc_prev, carry


@triton.jit(do_not_specialize=["t"])
def _lstm_fwd_step_kernel(
    xp_ptr,    # (T, B, 4H) x_t W_ih^T, gate order i, f, g, o; None when FUSE_X
    x_ptr,     # (B, I) the step's input when FUSE_X, else None
    w_ih_ptr,  # (4H, I) W_ih, row-major, when FUSE_X, else None
    w_ptr,     # (4H, K) W_hh, row-major
    b_ih_ptr,  # (4H,) b_ih, or None (then HAS_BIAS is False)
    b_hh_ptr,  # (4H,) b_hh, or None with b_ih
    h0_ptr,    # (B, K) h_{-1}
    c0_ptr,    # (B, H) c_{-1}, any float dtype
    y_ptr,     # (T, B, K) outputs h_t; slot t-1 is read as h_{t-1}
    cs_ptr,    # (T, B, H) cell states c_t (written), slot t-1 read as c_{t-1}
    out_ptr,   # (T, B, H) where h_t goes: y itself, or m_t = o tanh(c_t) when PROJ
    saved_ptr,  # (T, B, 4H) activated gates i, f, g, o for the backward pass
    batch_sizes_ptr,     # (T,) int32 rows active at each step (packed sequences), or None
    t, T, B, H, K, I,
    HAS_BIAS: tl.constexpr, HAS_BATCH_SIZES: tl.constexpr, PROJ: tl.constexpr,
    FUSE_X: tl.constexpr,
    ACC: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    G = 4 * H
    w_ptr, h_prev, y_ptr = fwd_step_ptrs(w_ptr, h0_ptr, y_ptr, t, T, B, G, K)
    if HAS_BIAS:
        b_ih_ptr = member(b_ih_ptr, 1, G)
        b_hh_ptr = member(b_hh_ptr, 1, G)
    c0_ptr = member(c0_ptr, B, H)
    cs_ptr = member(cs_ptr, T * B, H)
    out_ptr = member(out_ptr, T * B, H)
    saved_ptr = member(saved_ptr, T * B, G)
    rows, cols, mr, mc = tile_index(B, H, BLOCK_B, BLOCK_H)
    t64 = t.to(tl.int64)
    acc_i, acc_f, acc_g, acc_o = step_preacts(xp_ptr, x_ptr, w_ih_ptr, t, T, B, h_prev, w_ptr,
                                              rows, cols, mr, mc, H, K, I, 4, FUSE_X, ACC, UPCAST,
                                              PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
    c_prev = prev_state(t, c0_ptr, cs_ptr, rows, cols, B, H, mr, mc, ACC)
    i, f, g, o, c, h = lstm_cell(acc_i, acc_f, acc_g, acc_o, c_prev, b_ih_ptr, b_hh_ptr, cols, mc,
                                 H, HAS_BIAS, ACC)
    if HAS_BATCH_SIZES:
        # Finished sequences keep their state, so slot T-1 holds each one's own final state.
        active = active_rows(batch_sizes_ptr, t, rows)
        c = tl.where(active, c, c_prev)
        if PROJ:
            h = tl.where(active, h, 0.0)
        else:
            h = tl.where(active, h, load_tile(h_prev, rows, cols, K, mr, mc, ACC))
    store_tile(cs_ptr + t64 * B * H, c, rows, cols, H, mr, mc)
    store_tile(out_ptr + t64 * B * H, h, rows, cols, H, mr, mc)
    store_gates4(saved_ptr + t64 * B * G, rows, cols, H, mr, mc, i, f, g, o)


@triton.jit(do_not_specialize=["t"])
def _lstm_bwd_step_kernel(
    dy_ptr,    # (T, B, H) dL/dh_t from the output (dL/dm_t, recurrence included, when PROJ)
    w_ptr,     # (4H, H) W_hh (read unless PROJ)
    saved_ptr,  # (T, B, 4H) activated gates from the forward pass
    c0_ptr,    # (B, H) c_{-1}
    cs_ptr,    # (T, B, H) cell states c_t
    dcn_ptr,   # (B, H) dL/dc_{T-1} from the caller, or None (zero; then HAS_DCN is False)
    dgx_ptr,   # (T, B, 4H) out: dL/d(gate pre-activations); slot t+1 is read for the recurrence
    carry_ptr,  # (B, H) ACC: dL/dh passed through rows whose sequence has ended (read for t < T-1)
    dc_ptr,    # (B, H) ACC: dL/dc_{t-1} out, read back as dL/dc_t by the next step
    batch_sizes_ptr,     # (T,) int32 rows active at each step, or None
    t, T, B, H, K,
    HAS_BATCH_SIZES: tl.constexpr, PROJ: tl.constexpr, HAS_DCN: tl.constexpr,
    ACC: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    G = 4 * H
    dy_ptr, w_ptr, dgx_ptr, carry_ptr = bwd_step_ptrs(dy_ptr, w_ptr, dgx_ptr, carry_ptr, T, B,
                                                      G, H, K)
    saved_ptr = member(saved_ptr, T * B, G)
    c0_ptr = member(c0_ptr, B, H)
    cs_ptr = member(cs_ptr, T * B, H)
    if HAS_DCN:
        dcn_ptr = member(dcn_ptr, B, H)
    dc_ptr = member(dc_ptr, B, H)
    rows, cols, mr, mc = tile_index(B, H, BLOCK_B, BLOCK_H)
    t64 = t.to(tl.int64)
    if PROJ:   # dy is dL/dm_t, the recurrence included
        dh = load_tile(dy_ptr + t64 * B * H, rows, cols, H, mr, mc, ACC)
    else:
        dh = step_dh(dy_ptr, carry_ptr, dgx_ptr, w_ptr, t, T, B, rows, cols, mr, mc, G, H, ACC,
                     UPCAST, PRECISION, BLOCK_K)
    if t + 1 < T:
        dc_in = load_tile(dc_ptr, rows, cols, H, mr, mc, ACC)
    elif HAS_DCN:
        dc_in = load_tile(dcn_ptr, rows, cols, H, mr, mc, ACC)
    else:
        dc_in = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    i, f, g, o = load_gates4(saved_ptr + t64 * B * G, rows, cols, H, mr, mc, ACC)
    c = load_tile(cs_ptr + t64 * B * H, rows, cols, H, mr, mc, ACC)
    c_prev = prev_state(t, c0_ptr, cs_ptr, rows, cols, B, H, mr, mc, ACC)
    d_i, d_f, d_g, d_o, dc_prev, carry = lstm_cell_grad(dh, dc_in, i, f, g, o, c, c_prev, batch_sizes_ptr, t,
                                                        rows, HAS_BATCH_SIZES)
    store_gates4(dgx_ptr + t64 * B * G, rows, cols, H, mr, mc, d_i, d_f, d_g, d_o)
    store_tile(dc_ptr, dc_prev, rows, cols, H, mr, mc)
    if not PROJ:
        store_tile(carry_ptr, carry, rows, cols, H, mr, mc)


# The LSTM as the launchers see it (kernels.recurrence).
KERNELS = CellKernels(gates=4, saved=4, fwd=_lstm_fwd_step_kernel, bwd=_lstm_bwd_step_kernel,
                      has_cell=True)
