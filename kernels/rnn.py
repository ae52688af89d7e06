"""Fused Elman RNN step kernels: h' = act(xp_t + b_ih + h W_hh^T + b_hh), act = tanh or relu.
A single step (FUSE_X) computes x W_ih^T in the same launch."""
import triton
import triton.language as tl

from .common import (active_rows, add_rows_times_wt, bias_pair, bwd_step_ptrs,
                     fwd_step_ptrs, gate_input, load_tile, member, step_dh, store_tile, tanh,
                     tile_index)
from .layer import CellKernels


@triton.jit
def rnn_cell(acc, b_ih_ptr, b_hh_ptr, cols, mc, HAS_BIAS: tl.constexpr, RELU: tl.constexpr,
             ACC: tl.constexpr):
    """h_t from the pre-activation without bias."""
    if HAS_BIAS:
        bi, bh = bias_pair(b_ih_ptr, b_hh_ptr, cols, mc, ACC)
        acc += bi + bh
    if RELU:
        h = tl.maximum(acc, 0.0)
    else:
        h = tanh(acc)
    return h


@triton.jit
def rnn_cell_grad(dh, h, batch_sizes_ptr, t, rows, RELU: tl.constexpr, HAS_BATCH_SIZES: tl.constexpr):
    """(dL/d pre-activation, carry) from dL/dh_t (recurrence included) and h_t; rows whose
    sequence has ended at t (HAS_BATCH_SIZES) pass dh on in ``carry``."""
    if RELU:
        d = tl.where(h > 0.0, dh, 0.0)
    else:
        d = dh * (1.0 - h * h)
    carry = tl.zeros_like(dh)
    if HAS_BATCH_SIZES:
        active = active_rows(batch_sizes_ptr, t, rows)
        d = tl.where(active, d, 0.0)
        carry = tl.where(active, carry, dh)
    return d, carry


@triton.jit(do_not_specialize=["t"])
def _rnn_fwd_step_kernel(
    xp_ptr,    # (T, B, H) x_t W_ih^T; None when FUSE_X
    x_ptr,     # (B, I) the step's input when FUSE_X, else None
    w_ih_ptr,  # (H, I) W_ih, row-major, when FUSE_X, else None
    w_ptr,     # (H, H) W_hh, row-major
    b_ih_ptr,  # (H,), or None (then HAS_BIAS is False)
    b_hh_ptr,  # (H,), or None with b_ih
    h0_ptr,    # (B, H) h_{-1}
    y_ptr,     # (T, B, H) outputs h_t (written); slot t-1 is read as h_{t-1}
    batch_sizes_ptr,     # (T,) int32 rows active at each step, or None
    t, T, B, H, I,
    HAS_BIAS: tl.constexpr, HAS_BATCH_SIZES: tl.constexpr, FUSE_X: tl.constexpr,
    ACC: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    RELU: tl.constexpr,
):
    w_ptr, h_prev, y_ptr = fwd_step_ptrs(w_ptr, h0_ptr, y_ptr, t, T, B, H, H)
    if HAS_BIAS:
        b_ih_ptr = member(b_ih_ptr, 1, H)
        b_hh_ptr = member(b_hh_ptr, 1, H)
    rows, cols, mr, mc = tile_index(B, H, BLOCK_B, BLOCK_H)
    t64 = t.to(tl.int64)
    acc = gate_input(xp_ptr, x_ptr, w_ih_ptr, t, T, B, rows, cols, mr, mc, H, I, FUSE_X,
                     ACC, UPCAST, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
    acc = add_rows_times_wt(acc, h_prev, w_ptr, rows, cols, mr, mc, H, UPCAST, PRECISION, BLOCK_K)
    h = rnn_cell(acc, b_ih_ptr, b_hh_ptr, cols, mc, HAS_BIAS, RELU, ACC)
    if HAS_BATCH_SIZES:
        h = tl.where(active_rows(batch_sizes_ptr, t, rows), h,
                     load_tile(h_prev, rows, cols, H, mr, mc, ACC))
    store_tile(y_ptr + t64 * B * H, h, rows, cols, H, mr, mc)


@triton.jit(do_not_specialize=["t"])
def _rnn_bwd_step_kernel(
    dy_ptr,    # (T, B, H) dL/dh_t from the output
    w_ptr,     # (H, H) W_hh
    y_ptr,     # (T, B, H) h_t (slot t)
    dgx_ptr,   # (T, B, H) out: dL/d(pre-activation); slot t+1 read back for the recurrence
    carry_ptr,  # (B, H) ACC: dL/dh passed through rows whose sequence has ended (read for t < T-1)
    batch_sizes_ptr,     # (T,) int32 rows active at each step, or None
    t, T, B, H,
    HAS_BATCH_SIZES: tl.constexpr,
    ACC: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    RELU: tl.constexpr,
):
    dy_ptr, w_ptr, dgx_ptr, carry_ptr = bwd_step_ptrs(dy_ptr, w_ptr, dgx_ptr, carry_ptr, T, B,
                                                      H, H, H)
    y_ptr = member(y_ptr, T * B, H)
    rows, cols, mr, mc = tile_index(B, H, BLOCK_B, BLOCK_H)
    t64 = t.to(tl.int64)
    dh = step_dh(dy_ptr, carry_ptr, dgx_ptr, w_ptr, t, T, B, rows, cols, mr, mc, H, H, ACC,
                 UPCAST, PRECISION, BLOCK_K)
    h = load_tile(y_ptr + t64 * B * H, rows, cols, H, mr, mc, ACC)
    d, carry = rnn_cell_grad(dh, h, batch_sizes_ptr, t, rows, RELU, HAS_BATCH_SIZES)
    store_tile(dgx_ptr + t64 * B * H, d, rows, cols, H, mr, mc)
    store_tile(carry_ptr, carry, rows, cols, H, mr, mc)


# The Elman RNN as the launchers see it (kernels.recurrence), one per nonlinearity.
TANH = CellKernels(gates=1, saved=0, fwd=_rnn_fwd_step_kernel, bwd=_rnn_bwd_step_kernel,
                   consts={"RELU": False})
RELU = CellKernels(gates=1, saved=0, fwd=_rnn_fwd_step_kernel, bwd=_rnn_bwd_step_kernel,
                   consts={"RELU": True})
