"""Fused GRU step kernels, following torch.nn.GRU exactly (gate order r, z, n):

r = sigmoid(xp_r + b_ir + h W_hr^T + b_hr), z likewise,
n = tanh(xp_n + b_in + r * (h W_hn^T + b_hn)), h' = (1 - z) n + z h.

Same program layout as the LSTM kernels: one (batch tile, hidden tile) per program, all three
gates of it, one launch per step forward and backward; a single step (FUSE_X) computes its input
projection in the same launch.
"""
import triton
import triton.language as tl

from .common import (active_rows, bias_pair, bwd_step_ptrs, fwd_step_ptrs, load_gates4,
                     load_tile, member, prev_state, sigmoid, step_dh, step_preacts,
                     store_gates3, store_gates4, store_tile, tanh, tile_index)
from .layer import CellKernels


@triton.jit
def gru_cell(acc_r, acc_z, x_n, h_n, hp, b_ih_ptr, b_hh_ptr, cols, mc, H,
             HAS_BIAS: tl.constexpr, ACC: tl.constexpr):
    """One GRU update from the pre-activations without bias (r and z summed over both sides,
    x_n = x W_in^T, h_n = h W_hn^T) and h_{t-1} = ``hp``: (r, z, n, hn with b_hn, h_t).  """
    if HAS_BIAS:
        bi, bh = bias_pair(b_ih_ptr, b_hh_ptr, cols, mc, ACC)
        acc_r += bi + bh
        bi, bh = bias_pair(b_ih_ptr, b_hh_ptr, cols + H, mc, ACC)
        acc_z += bi + bh
        bi, bh = bias_pair(b_ih_ptr, b_hh_ptr, cols + 2 * H, mc, ACC)
        x_n += bi
        h_n += bh
    r = sigmoid(acc_r)
    z = sigmoid(acc_z)
    n = tanh(x_n + r * h_n)
    return r, z, n, h_n, (1.0 - z) * n + z * hp


@triton.jit
def gru_cell_grad(dh, r, z, n, h_n, hp, batch_sizes_ptr, t, rows, HAS_BATCH_SIZES: tl.constexpr):
    """The gradients of one GRU update from dL/dh_t (recurrence included): (d_r, d_z, d_npre,
    d_hn, carry), carry = dL/dh_{t-1} through z; rows whose sequence has ended at t
    (HAS_BATCH_SIZES) get zero gate gradients and pass dh on in ``carry``."""
    d_npre = dh * (1.0 - z) * (1.0 - n * n)
    d_hn = d_npre * r
    d_r = d_npre * h_n * r * (1.0 - r)
    d_z = dh * (hp - n) * z * (1.0 - z)
    carry = dh * z
    if HAS_BATCH_SIZES:
        active = active_rows(batch_sizes_ptr, t, rows)
        d_npre = tl.where(active, d_npre, 0.0)
        d_hn = tl.where(active, d_hn, 0.0)
        d_r = tl.where(active, d_r, 0.0)
        d_z = tl.where(active, d_z, 0.0)
        carry = tl.where(active, carry, dh)
    return d_r, d_z, d_npre, d_hn, carry


@triton.jit(do_not_specialize=["t"])
def _gru_fwd_step_kernel(
    xp_ptr,    # (T, B, 3H) x_t W_ih^T, gate order r, z, n; None when FUSE_X
    x_ptr,     # (B, I) the step's input when FUSE_X, else None
    w_ih_ptr,  # (3H, I) W_ih, row-major, when FUSE_X, else None
    w_ptr,     # (3H, H) W_hh, row-major
    b_ih_ptr,  # (3H,), or None (then HAS_BIAS is False)
    b_hh_ptr,  # (3H,), or None with b_ih
    h0_ptr,    # (B, H) h_{-1}
    y_ptr,     # (T, B, H) outputs h_t (written); slot t-1 is read as h_{t-1}
    saved_ptr,  # (T, B, 4H) r, z, n and hn = h W_hn^T + b_hn for the backward pass
    batch_sizes_ptr,     # (T,) int32 rows active at each step, or None
    t, T, B, H, I,
    HAS_BIAS: tl.constexpr, HAS_BATCH_SIZES: tl.constexpr, FUSE_X: tl.constexpr,
    ACC: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    G = 3 * H
    w_ptr, h_prev, y_ptr = fwd_step_ptrs(w_ptr, h0_ptr, y_ptr, t, T, B, G, H)
    if HAS_BIAS:
        b_ih_ptr = member(b_ih_ptr, 1, G)
        b_hh_ptr = member(b_hh_ptr, 1, G)
    saved_ptr = member(saved_ptr, T * B, 4 * H)
    rows, cols, mr, mc = tile_index(B, H, BLOCK_B, BLOCK_H)
    t64 = t.to(tl.int64)
    acc_r, acc_z, x_n, h_n = step_preacts(xp_ptr, x_ptr, w_ih_ptr, t, T, B, h_prev, w_ptr,
                                          rows, cols, mr, mc, H, H, I, 3, FUSE_X, ACC, UPCAST,
                                          PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
    hp = load_tile(h_prev, rows, cols, H, mr, mc, ACC)
    r, z, n, h_n, h = gru_cell(acc_r, acc_z, x_n, h_n, hp, b_ih_ptr, b_hh_ptr, cols, mc, H,
                               HAS_BIAS, ACC)
    if HAS_BATCH_SIZES:
        h = tl.where(active_rows(batch_sizes_ptr, t, rows), h, hp)
    store_tile(y_ptr + t64 * B * H, h, rows, cols, H, mr, mc)
    store_gates4(saved_ptr + t64 * B * 4 * H, rows, cols, H, mr, mc, r, z, n, h_n)


@triton.jit(do_not_specialize=["t"])
def _gru_bwd_step_kernel(
    dy_ptr,    # (T, B, H) dL/dh_t from the output
    w_ptr,     # (3H, H) W_hh
    saved_ptr,  # (T, B, 4H) r, z, n, hn from the forward pass
    h0_ptr,    # (B, H) h_{-1}
    y_ptr,     # (T, B, H) h_t (slot t-1 is h_{t-1})
    dgx_ptr,   # (T, B, 3H) out: dL/d(x-side pre-activations) r, z, n
    dgh_ptr,   # (T, B, 3H) out: dL/d(h-side pre-activations) r, z, hn; slot t+1 read back
    carry_ptr,  # (B, H) ACC out: dL/dh_{t-1} through z (and through ended rows); read for t < T-1
    batch_sizes_ptr,     # (T,) int32 rows active at each step, or None
    t, T, B, H,
    HAS_BATCH_SIZES: tl.constexpr,
    ACC: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    G = 3 * H
    dy_ptr, w_ptr, dgx_ptr, carry_ptr = bwd_step_ptrs(dy_ptr, w_ptr, dgx_ptr, carry_ptr, T, B,
                                                      G, H, H)
    saved_ptr = member(saved_ptr, T * B, 4 * H)
    h0_ptr = member(h0_ptr, B, H)
    y_ptr = member(y_ptr, T * B, H)
    dgh_ptr = member(dgh_ptr, T * B, G)
    rows, cols, mr, mc = tile_index(B, H, BLOCK_B, BLOCK_H)
    t64 = t.to(tl.int64)
    dh = step_dh(dy_ptr, carry_ptr, dgh_ptr, w_ptr, t, T, B, rows, cols, mr, mc, G, H, ACC,
                 UPCAST, PRECISION, BLOCK_K)
    r, z, n, h_n = load_gates4(saved_ptr + t64 * B * 4 * H, rows, cols, H, mr, mc, ACC)
    hp = prev_state(t, h0_ptr, y_ptr, rows, cols, B, H, mr, mc, ACC)
    d_r, d_z, d_npre, d_hn, carry = gru_cell_grad(dh, r, z, n, h_n, hp, batch_sizes_ptr, t, rows,
                                                  HAS_BATCH_SIZES)
    # The x side sees n's pre-activation, the h side h W_hn^T + b_hn (scaled by r).
    store_gates3(dgx_ptr + t64 * B * G, rows, cols, H, mr, mc, d_r, d_z, d_npre)
    store_gates3(dgh_ptr + t64 * B * G, rows, cols, H, mr, mc, d_r, d_z, d_hn)
    store_tile(carry_ptr, carry, rows, cols, H, mr, mc)


# The GRU as the launchers see it (kernels.recurrence): r, z, n and hn saved per step.
KERNELS = CellKernels(gates=3, saved=4, fwd=_gru_fwd_step_kernel, bwd=_gru_bwd_step_kernel,
                      split_dgates=True)
