"""The persistent schedule: one launch runs a layer-direction's whole time loop.

Program (p, s, m) of the grid owns hidden units ``p * BLOCK_J ...`` (BLOCK_J of them) of member
m (a direction of a layer, kernels.recurrence), for the BLOCK_B batch rows of slice s.  Its part
of W_hh stays on chip for the whole loop: forward, all G gate rows of its units (G
(BLOCK_K, BLOCK_J) tiles, transposed); backward, the matching columns for
dh_{t-1} = dgates_t W_hh.  A small part is loaded once, into registers (RESIDENT); a larger one
is re-read each step in BLOCK_K chunks and stays in L1, which nothing else fills: what the
programs exchange (h_{t-1}, dgates_{t+1}) is read through L2 only (``.cg``: other programs
wrote it).  Each step a program reads the whole h_{t-1} (or dgates_{t+1}) of its batch rows,
computes its units' update with the cell's own pointwise helpers (kernels.lstm, gru, rnn) and
writes its slice; then the programs of its (slice, member) group meet at ``grid_barrier``, the
one place where programs synchronise.  Batch slices and members are independent recurrences:
each group counts on its own barrier word.  State a program owns across steps (the LSTM's c,
the backward's dc and carry) stays in registers.

One step per launch (the interpreter): Triton's interpreter runs programs one after another, so
a spin barrier would never return there.  With BARRIER off the same body runs the steps
[t0, t1) of one launch; the launcher then launches it once per step and the launch boundary is
the barrier.  What a program keeps in registers is read from and written to its buffers at a
launch's ends (cs, carry, dc), so both modes compute the same values in the same order.

Eligible: one direction or stacked directions without projection, T > 1, a W_hh part of at most
``L1_BYTES`` per program, on a grid that can be co-resident (never above the SM count; on CUDA
launched cooperatively, so the driver refuses a grid that cannot be instead of hanging).
Everything else, and everything ``FASTCELLS_RECURRENCE`` does not send here, runs the step chain
(kernels.recurrence).  ``auto`` sends a shape here only where ``TABLE_PATH``, written by
bench/persistent_sweep.py from GPU rows, measured this path faster on this GPU.

No CUDA graph on this path: outputs are allocated per call, nothing is kept between calls.
"""
import json
import os
from typing import NamedTuple, Optional, Tuple

import torch
import triton
import triton.language as tl

from . import config
from .common import (acc_dtype, active_rows, bias_pair, dot_acc, dot_flags, interpreting,
                     load_tile, prev_state, store_tile, tl_dtype)
from . import gru, lstm, rnn
from .gru import gru_cell, gru_cell_grad
from .layer import LayerBuffers, StepGrads
from .lstm import lstm_cell, lstm_cell_grad
from .rnn import rnn_cell, rnn_cell_grad

LSTM, GRU, RNN = 0, 1, 2   # the CELL constexpr
BLOCK_J = 16               # hidden units per program (tl.dot needs tiles >= 16)
NUM_WARPS = 8
# No software pipelining: the pipeliner turns a loop's loads into cp.async.ca, through L1,
# which is not coherent between programs; h and dgates must be read .cg (L2) every step.
NUM_STAGES = 1
# A program's part of W_hh (G * H * BLOCK_J elements) stays on chip for the whole loop:
# in registers (RESIDENT, loaded once) where it takes at most RESIDENT_BYTES, which compiles
# for sm_90 without spills at BLOCK_B 16 and NUM_WARPS (tests/persistent_ptx_check.py); else
# streamed from L1 in BLOCK_K chunks each step (read-only, so L1 keeps it: the state other
# programs write is read around L1).  A part above L1_BYTES would not stay in L1: step chain.
RESIDENT_BYTES = 16 * 1024
L1_BYTES = 128 * 1024
# (BLOCK_B, streamed BLOCK_K), tried in order until the grid fits the SMs: more batch rows per
# program, a shorter chunk of h per row, the same register footprint
TILES = ((16, 32), (32, 16), (64, 16))
TABLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "persistent_table.json")


# ----------------------------------------------------------------------------- jit helpers
@triton.jit
def grid_barrier(sem_ptr, n):
    """The ``n``-th barrier (n = 1, 2, ...) of this program's group: the programs of its batch
    slice and member, one word of ``sem_ptr`` (M, NB) int32, zero at launch.  Each arrival
    adds 1 and the word only grows, so a program waits until it reads n * (group size): one
    word serves every step of a launch (n * P < 2**31).  The arrival is a release (this
    program's stores before it are visible to any program that acquires after it), the spin an
    acquire, both at GPU scope."""
    word = sem_ptr + tl.program_id(2) * tl.num_programs(1) + tl.program_id(1)
    target = n * tl.num_programs(0)
    tl.debug_barrier()   # every thread of this program has stored its part
    tl.atomic_add(word, 1, sem="release", scope="gpu")
    seen = tl.atomic_add(word, 0, sem="acquire", scope="gpu")
    while seen < target:
        seen = tl.atomic_add(word, 0, sem="acquire", scope="gpu")
    tl.debug_barrier()


@triton.jit
def _slice(B, H, BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr):
    """This program's batch rows (int64), hidden units, K lanes, and their masks."""
    rows = (tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    units = tl.program_id(0) * BLOCK_J + tl.arange(0, BLOCK_J)
    ks = tl.arange(0, BLOCK_K)
    return rows, units, ks, rows < B, units < H, ks < H


@triton.jit
def _w_cols(w_ptr, gate, units, ks, mask, H, K):
    """W[gate * H + units, ks]^T of W (., K) row-major: (BLOCK_K, BLOCK_J), loaded once."""
    return tl.load(w_ptr + (units + gate * H)[None, :] * K + ks[:, None], mask=mask, other=0.0)


@triton.jit
def _w_rows(w_ptr, gate, units, ks, mask, H):
    """W[gate * H + ks, units] of W (., H) row-major: (BLOCK_K, BLOCK_J), loaded once."""
    return tl.load(w_ptr + (ks + gate * H)[:, None] * H + units[None, :], mask=mask, other=0.0)


@triton.jit
def _rows_cg(a_ptr, rows, ks, mr, mk, stride):
    """A[rows, ks] of A row-major (``stride`` per row), read through L2 (``.cg``): another
    program wrote it since this one last looked."""
    return tl.load(a_ptr + rows[:, None] * stride + ks[None, :], mask=mr[:, None] & mk[None, :],
                   other=0.0, cache_modifier=".cg")


@triton.jit
def _rows_times(acc, a_ptr, rows, ks, mr, mk, stride, w, UPCAST: tl.constexpr,
                PRECISION: tl.constexpr):
    """acc += A[rows, ks] @ w, A read as ``_rows_cg`` reads it."""
    return dot_acc(acc, _rows_cg(a_ptr, rows, ks, mr, mk, stride), w, UPCAST, PRECISION)


@triton.jit(do_not_specialize=["t0", "t1"])
def _persistent_fwd_kernel(
    xp_ptr,     # (M, T, B, G*H) x_t W_ih^T, the cell's gate order
    w_ptr,      # (M, G*H, H) W_hh, row-major
    b_ih_ptr,   # (M, G*H) b_ih (HAS_BIAS)
    b_hh_ptr,   # (M, G*H) b_hh (HAS_BIAS)
    h0_ptr,     # (M, B, H) h_{-1}
    c0_ptr,     # (M, B, H) c_{-1} (LSTM)
    y_ptr,      # (M, T, B, H) out: h_t; slot t-1 is read as h_{t-1}
    cs_ptr,     # (M, T, B, H) ACC out: c_t (LSTM); slot t0-1 read at a launch's start
    saved_ptr,  # (M, T, B, 4H) out: i, f, g, o (LSTM) or r, z, n, hn (GRU)
    batch_sizes_ptr,  # (T,) int32 rows active at each step (HAS_BATCH_SIZES)
    sem_ptr,    # (M, NB) int32 barrier words, zero (BARRIER)
    t0, t1, T, B, H,
    CELL: tl.constexpr, RELU: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_BATCH_SIZES: tl.constexpr, BARRIER: tl.constexpr, RESIDENT: tl.constexpr,
    ACC: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr,
):
    G: tl.constexpr = 4 if CELL == 0 else (3 if CELL == 1 else 1)
    m = tl.program_id(2).to(tl.int64)
    GH = G * H
    xp_ptr += m * T * B * GH
    w_ptr += m * GH * H
    h0_ptr += m * B * H
    y_ptr += m * T * B * H
    if HAS_BIAS:
        b_ih_ptr += m * GH
        b_hh_ptr += m * GH
    if CELL == 0:
        c0_ptr += m * B * H
        cs_ptr += m * T * B * H
    if CELL != 2:
        saved_ptr += m * T * B * 4 * H
    rows, units, ks, mr, mc, mk = _slice(B, H, BLOCK_B, BLOCK_J, BLOCK_K)
    if RESIDENT:
        # this program's rows of W_hh, in registers for the whole loop (BLOCK_K covers H)
        wmask = mk[:, None] & mc[None, :]
        w0 = _w_cols(w_ptr, 0, units, ks, wmask, H, H)
        if CELL != 2:
            w1 = _w_cols(w_ptr, 1, units, ks, wmask, H, H)
            w2 = _w_cols(w_ptr, 2, units, ks, wmask, H, H)
        if CELL == 0:
            w3 = _w_cols(w_ptr, 3, units, ks, wmask, H, H)
    if CELL == 0:
        c = prev_state(t0, c0_ptr, cs_ptr, rows, units, B, H, mr, mc, ACC)
    for t in range(t0, t1):
        t64 = tl.cast(t, tl.int64)
        if t == 0:
            h_prev = h0_ptr
        else:
            h_prev = y_ptr + (t64 - 1) * B * H
        xp_t = xp_ptr + t64 * B * GH
        # the x side, then the h side added: a0..a3 the gates' pre-activations (GRU: a2 is
        # h W_hn^T alone, its x side x_n kept apart for r to scale)
        a0 = load_tile(xp_t, rows, units, GH, mr, mc, ACC)
        if CELL != 2:
            a1 = load_tile(xp_t, rows, units + H, GH, mr, mc, ACC)
        if CELL == 0:
            a2 = load_tile(xp_t, rows, units + 2 * H, GH, mr, mc, ACC)
            a3 = load_tile(xp_t, rows, units + 3 * H, GH, mr, mc, ACC)
        if CELL == 1:
            x_n = load_tile(xp_t, rows, units + 2 * H, GH, mr, mc, ACC)
            a2 = tl.zeros((BLOCK_B, BLOCK_J), dtype=ACC)
        if RESIDENT:
            hk = _rows_cg(h_prev, rows, ks, mr, mk, H)   # h_{t-1}: one load serves every gate
            a0 = dot_acc(a0, hk, w0, UPCAST, PRECISION)
            if CELL != 2:
                a1 = dot_acc(a1, hk, w1, UPCAST, PRECISION)
                a2 = dot_acc(a2, hk, w2, UPCAST, PRECISION)
            if CELL == 0:
                a3 = dot_acc(a3, hk, w3, UPCAST, PRECISION)
        else:
            # W_hh's rows stream through L1 in BLOCK_K chunks: read-only, re-read every step,
            # while h bypasses L1 (.cg) and leaves them cached
            for k0 in range(0, H, BLOCK_K):
                kk = k0 + ks
                mkk = kk < H
                wm = mkk[:, None] & mc[None, :]
                hk = _rows_cg(h_prev, rows, kk, mr, mkk, H)
                a0 = dot_acc(a0, hk, _w_cols(w_ptr, 0, units, kk, wm, H, H), UPCAST, PRECISION)
                if CELL != 2:
                    a1 = dot_acc(a1, hk, _w_cols(w_ptr, 1, units, kk, wm, H, H), UPCAST,
                                 PRECISION)
                    a2 = dot_acc(a2, hk, _w_cols(w_ptr, 2, units, kk, wm, H, H), UPCAST,
                                 PRECISION)
                if CELL == 0:
                    a3 = dot_acc(a3, hk, _w_cols(w_ptr, 3, units, kk, wm, H, H), UPCAST,
                                 PRECISION)
        hp = load_tile(h_prev, rows, units, H, mr, mc, ACC)
        if CELL == 0:
            i, f, g, o, c_new, h = lstm_cell(a0, a1, a2, a3, c, b_ih_ptr, b_hh_ptr, units, mc,
                                             H, HAS_BIAS, ACC)
            if HAS_BATCH_SIZES:
                # finished sequences keep their state: slot T-1 holds each one's final state
                active = active_rows(batch_sizes_ptr, t, rows)
                c_new = tl.where(active, c_new, c)
                h = tl.where(active, h, hp)
            c = c_new
            store_tile(cs_ptr + t64 * B * H, c, rows, units, H, mr, mc)
            s_t = saved_ptr + t64 * B * 4 * H
            store_tile(s_t, i, rows, units, 4 * H, mr, mc)
            store_tile(s_t, f, rows, units + H, 4 * H, mr, mc)
            store_tile(s_t, g, rows, units + 2 * H, 4 * H, mr, mc)
            store_tile(s_t, o, rows, units + 3 * H, 4 * H, mr, mc)
        elif CELL == 1:
            r, z, n, h_n, h = gru_cell(a0, a1, x_n, a2, hp, b_ih_ptr, b_hh_ptr, units, mc, H,
                                       HAS_BIAS, ACC)
            if HAS_BATCH_SIZES:
                h = tl.where(active_rows(batch_sizes_ptr, t, rows), h, hp)
            s_t = saved_ptr + t64 * B * 4 * H
            store_tile(s_t, r, rows, units, 4 * H, mr, mc)
            store_tile(s_t, z, rows, units + H, 4 * H, mr, mc)
            store_tile(s_t, n, rows, units + 2 * H, 4 * H, mr, mc)
            store_tile(s_t, h_n, rows, units + 3 * H, 4 * H, mr, mc)
        else:
            h = rnn_cell(a0, b_ih_ptr, b_hh_ptr, units, mc, HAS_BIAS, RELU, ACC)
            if HAS_BATCH_SIZES:
                h = tl.where(active_rows(batch_sizes_ptr, t, rows), h, hp)
        store_tile(y_ptr + t64 * B * H, h, rows, units, H, mr, mc)
        if BARRIER:
            grid_barrier(sem_ptr, t - t0 + 1)


@triton.jit(do_not_specialize=["t0", "t1"])
def _persistent_bwd_kernel(
    dy_ptr,     # (M, T, B, H) dL/dh_t from the output
    w_ptr,      # (M, G*H, H) W_hh, row-major
    saved_ptr,  # (M, T, B, 4H) the forward's gates (LSTM, GRU)
    h0_ptr,     # (M, B, H) h_{-1} (GRU)
    y_ptr,      # (M, T, B, H) h_t (GRU, RNN)
    c0_ptr,     # (M, B, H) c_{-1} (LSTM)
    cs_ptr,     # (M, T, B, H) ACC c_t (LSTM)
    dcn_ptr,    # (M, B, H) dL/dc_{T-1} (HAS_DCN)
    dgx_ptr,    # (M, T, B, G*H) out: dL/d(x-side pre-activations); the h side but for the GRU
    dgh_ptr,    # (M, T, B, 3H) out: dL/d(h-side pre-activations) r, z, hn (GRU)
    carry_ptr,  # (M, B, H) ACC: dL/dh not through W_hh; in at t1 < T, out at the launch's end
    dc_ptr,     # (M, B, H) ACC: dL/dc (LSTM); in at t1 < T, out: dL/dc_{t0-1}
    batch_sizes_ptr,  # (T,) int32 rows active at each step (HAS_BATCH_SIZES)
    sem_ptr,    # (M, NB) int32 barrier words, zero (BARRIER)
    t0, t1, T, B, H,
    CELL: tl.constexpr, RELU: tl.constexpr, HAS_BATCH_SIZES: tl.constexpr,
    HAS_DCN: tl.constexpr, BARRIER: tl.constexpr, RESIDENT: tl.constexpr,
    ACC: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr,
):
    G: tl.constexpr = 4 if CELL == 0 else (3 if CELL == 1 else 1)
    m = tl.program_id(2).to(tl.int64)
    GH = G * H
    dy_ptr += m * T * B * H
    w_ptr += m * GH * H
    dgx_ptr += m * T * B * GH
    carry_ptr += m * B * H
    if CELL != 2:
        saved_ptr += m * T * B * 4 * H
    if CELL != 0:
        h0_ptr += m * B * H
        y_ptr += m * T * B * H
    if CELL == 0:
        c0_ptr += m * B * H
        cs_ptr += m * T * B * H
        dc_ptr += m * B * H
        if HAS_DCN:
            dcn_ptr += m * B * H
    if CELL == 1:
        dgh_ptr += m * T * B * GH
    else:
        dgh_ptr = dgx_ptr   # one gradient serves both sides
    rows, units, ks, mr, mc, mk = _slice(B, H, BLOCK_B, BLOCK_J, BLOCK_K)
    if RESIDENT:
        # this program's columns of W_hh, in registers for the whole loop (BLOCK_K covers H)
        wmask = mk[:, None] & mc[None, :]
        w0 = _w_rows(w_ptr, 0, units, ks, wmask, H)
        if CELL != 2:
            w1 = _w_rows(w_ptr, 1, units, ks, wmask, H)
            w2 = _w_rows(w_ptr, 2, units, ks, wmask, H)
        if CELL == 0:
            w3 = _w_rows(w_ptr, 3, units, ks, wmask, H)
    if t1 < T:
        carry = load_tile(carry_ptr, rows, units, H, mr, mc, ACC)
    else:
        carry = tl.zeros((BLOCK_B, BLOCK_J), dtype=ACC)
    if CELL == 0:
        if t1 < T:
            dc = load_tile(dc_ptr, rows, units, H, mr, mc, ACC)
        elif HAS_DCN:
            dc = load_tile(dcn_ptr, rows, units, H, mr, mc, ACC)
        else:
            dc = tl.zeros((BLOCK_B, BLOCK_J), dtype=ACC)
    for step in range(t0, t1):
        t = t1 - 1 - (step - t0)   # backwards in time
        t64 = tl.cast(t, tl.int64)
        dh = load_tile(dy_ptr + t64 * B * H, rows, units, H, mr, mc, ACC) + carry
        if t + 1 < T:
            dg = dgh_ptr + (t64 + 1) * B * GH   # dgates_{t+1}, written by every program
            if RESIDENT:
                dh = _rows_times(dh, dg, rows, ks, mr, mk, GH, w0, UPCAST, PRECISION)
                if CELL != 2:
                    dh = _rows_times(dh, dg + H, rows, ks, mr, mk, GH, w1, UPCAST, PRECISION)
                    dh = _rows_times(dh, dg + 2 * H, rows, ks, mr, mk, GH, w2, UPCAST,
                                     PRECISION)
                if CELL == 0:
                    dh = _rows_times(dh, dg + 3 * H, rows, ks, mr, mk, GH, w3, UPCAST,
                                     PRECISION)
            else:
                # as the forward: W_hh's columns stream through L1, dgates bypass it
                for k0 in range(0, H, BLOCK_K):
                    kk = k0 + ks
                    mkk = kk < H
                    wm = mkk[:, None] & mc[None, :]
                    dh = _rows_times(dh, dg, rows, kk, mr, mkk, GH,
                                     _w_rows(w_ptr, 0, units, kk, wm, H), UPCAST, PRECISION)
                    if CELL != 2:
                        dh = _rows_times(dh, dg + H, rows, kk, mr, mkk, GH,
                                         _w_rows(w_ptr, 1, units, kk, wm, H), UPCAST, PRECISION)
                        dh = _rows_times(dh, dg + 2 * H, rows, kk, mr, mkk, GH,
                                         _w_rows(w_ptr, 2, units, kk, wm, H), UPCAST, PRECISION)
                    if CELL == 0:
                        dh = _rows_times(dh, dg + 3 * H, rows, kk, mr, mkk, GH,
                                         _w_rows(w_ptr, 3, units, kk, wm, H), UPCAST, PRECISION)
        if CELL == 0:
            s_t = saved_ptr + t64 * B * 4 * H
            i = load_tile(s_t, rows, units, 4 * H, mr, mc, ACC)
            f = load_tile(s_t, rows, units + H, 4 * H, mr, mc, ACC)
            g = load_tile(s_t, rows, units + 2 * H, 4 * H, mr, mc, ACC)
            o = load_tile(s_t, rows, units + 3 * H, 4 * H, mr, mc, ACC)
            c = load_tile(cs_ptr + t64 * B * H, rows, units, H, mr, mc, ACC)
            c_prev = prev_state(t, c0_ptr, cs_ptr, rows, units, B, H, mr, mc, ACC)
            d_i, d_f, d_g, d_o, dc, carry = lstm_cell_grad(dh, dc, i, f, g, o, c, c_prev,
                                                           batch_sizes_ptr, t, rows,
                                                           HAS_BATCH_SIZES)
            d_t = dgx_ptr + t64 * B * GH
            store_tile(d_t, d_i, rows, units, GH, mr, mc)
            store_tile(d_t, d_f, rows, units + H, GH, mr, mc)
            store_tile(d_t, d_g, rows, units + 2 * H, GH, mr, mc)
            store_tile(d_t, d_o, rows, units + 3 * H, GH, mr, mc)
        elif CELL == 1:
            s_t = saved_ptr + t64 * B * 4 * H
            r = load_tile(s_t, rows, units, 4 * H, mr, mc, ACC)
            z = load_tile(s_t, rows, units + H, 4 * H, mr, mc, ACC)
            n = load_tile(s_t, rows, units + 2 * H, 4 * H, mr, mc, ACC)
            h_n = load_tile(s_t, rows, units + 3 * H, 4 * H, mr, mc, ACC)
            hp = prev_state(t, h0_ptr, y_ptr, rows, units, B, H, mr, mc, ACC)
            d_r, d_z, d_npre, d_hn, carry = gru_cell_grad(dh, r, z, n, h_n, hp,
                                                          batch_sizes_ptr, t, rows,
                                                          HAS_BATCH_SIZES)
            # the x side sees n's pre-activation, the h side h W_hn^T + b_hn (scaled by r)
            d_t = dgx_ptr + t64 * B * GH
            store_tile(d_t, d_r, rows, units, GH, mr, mc)
            store_tile(d_t, d_z, rows, units + H, GH, mr, mc)
            store_tile(d_t, d_npre, rows, units + 2 * H, GH, mr, mc)
            d_t = dgh_ptr + t64 * B * GH
            store_tile(d_t, d_r, rows, units, GH, mr, mc)
            store_tile(d_t, d_z, rows, units + H, GH, mr, mc)
            store_tile(d_t, d_hn, rows, units + 2 * H, GH, mr, mc)
        else:
            h = load_tile(y_ptr + t64 * B * H, rows, units, H, mr, mc, ACC)
            d, carry = rnn_cell_grad(dh, h, batch_sizes_ptr, t, rows, RELU, HAS_BATCH_SIZES)
            store_tile(dgx_ptr + t64 * B * GH, d, rows, units, GH, mr, mc)
        if BARRIER:
            grid_barrier(sem_ptr, step - t0 + 1)
    store_tile(carry_ptr, carry, rows, units, H, mr, mc)
    if CELL == 0:
        store_tile(dc_ptr, dc, rows, units, H, mr, mc)


# ----------------------------------------------------------------------------- host side
class Plan(NamedTuple):
    """How a layer runs on this path: the grid (hidden slices P, batch slices NB, members M),
    the tiles and warps, whether W_hh's part sits in registers (``resident``: BLOCK_K covers H)
    or streams in BLOCK_K chunks, and whether one launch runs the loop (``barrier``) or one
    launch per step does."""
    grid: Tuple[int, int, int]
    block_b: int
    block_j: int
    block_k: int
    num_warps: int
    resident: bool
    barrier: bool


def _cell(kern):
    """(CELL constexpr, RELU, torch's mode name) of a cell's kernels (``CellKernels``), or
    None for a cell this kernel has no branch for (a new cell runs the step chain until it
    gets one)."""
    relu = bool(kern.consts.get("RELU", False))
    for family, cell in ((lstm.KERNELS, LSTM), (gru.KERNELS, GRU), (rnn.TANH, RNN)):
        if kern.fwd is family.fwd:
            name = ("lstm", "gru", "rnn_relu" if relu else "rnn_tanh")[cell]
            return cell, relu, name
    return None


_sms = {}
_fits = {}   # (kernel key) -> whether the compiled kernel's grid can be co-resident


def _sm_count(device):
    if device.index not in _sms:
        _sms[device.index] = torch.cuda.get_device_properties(device).multi_processor_count
    return _sms[device.index]


def plan(kern, B, H, dtype, device, members=1) -> Optional[Plan]:
    """The Plan of a (members, T, B, H) layer of cell ``kern`` (``CellKernels``), or None
    where this path does not run it: a cell it has no branch for, W_hh's part per program above
    L1_BYTES, or more programs than SMs at every tile of TILES (programs wait on each other:
    all must be resident)."""
    if B == 0 or H == 0 or _cell(kern) is None:
        return None
    elem = torch.empty((), dtype=dtype).element_size()
    if kern.gates * H * BLOCK_J * elem > L1_BYTES:
        return None
    barrier = device.type == "cuda" and not interpreting()
    for block_b, block_k in TILES:
        grid = (triton.cdiv(H, BLOCK_J), triton.cdiv(B, block_b), members)
        if not barrier or grid[0] * grid[1] * grid[2] <= _sm_count(device):
            break
    else:
        return None
    k_all = max(16, triton.next_power_of_2(H))
    resident = block_b == TILES[0][0] and kern.gates * k_all * BLOCK_J * elem <= RESIDENT_BYTES
    return Plan(grid, block_b, BLOCK_J, k_all if resident else min(block_k, k_all), NUM_WARPS,
                resident, barrier)


_table = {}   # path -> (mtime, rows)


def _table_rows(path=TABLE_PATH):
    """The measured rows of ``path`` (bench/persistent_sweep.py writes it), re-read when the
    file changes; none where it is absent."""
    try:
        mtime = os.path.getmtime(path)
    except OSError:
        return ()
    hit = _table.get(path)
    if hit is None or hit[0] != mtime:
        with open(path) as f:
            data = json.load(f)
        gpu = data.get("meta", {}).get("gpu")
        hit = _table[path] = (mtime, tuple(dict(r, gpu=gpu) for r in data.get("rows", ())))
    return hit[1]


def measured_faster(cell_name, dtype, H, B, gpu, rows):
    """Whether the measured ``rows`` say this path is faster for a (cell, dtype, H, B) layer on
    ``gpu``: the smallest measured bucket with H_row >= H and B_row >= B decides, and only if
    every row of it chose this path.  No covering row: no."""
    dt = str(dtype).replace("torch.", "")
    mine = [r for r in rows if r["cell"] == cell_name and r["dtype"] == dt and r["gpu"] == gpu
            and r["H"] >= H and r["B"] >= B]
    if not mine:
        return False
    bucket = min((r["H"], r["B"]) for r in mine)
    return all(r["choice"] == "persistent" for r in mine if (r["H"], r["B"]) == bucket)


def chosen(kern, inputs) -> Optional[Plan]:
    """The Plan when this call's layer runs persistent, else None (the step chain):
    ``FASTCELLS_RECURRENCE=persistent`` wherever eligible, ``auto`` where measured faster."""
    choice = config.read(config.RECURRENCE)
    if choice == "step":
        return None
    x, _, _, (_, w_hh, _, _, w_hr), _ = inputs
    if x.dim() < 3 or x.dim() > 4 or x.shape[-3] < 2 or w_hr is not None:
        return None
    M = x.shape[0] if x.dim() == 4 else 1
    B, H = x.shape[-2], w_hh.shape[-1]
    p = plan(kern, B, H, x.dtype, x.device, M)
    if p is None or choice == "persistent":
        return p
    if x.device.type != "cuda":
        return None
    gpu = torch.cuda.get_device_name(x.device)
    return p if measured_faster(_cell(kern)[2], x.dtype, H, B, gpu, _table_rows()) else None


def _meta(p, kern, dtype):
    cell, relu, _ = _cell(kern)
    upcast, precision = dot_flags(dtype, torch._C._get_cudnn_allow_tf32())
    opts = dict(CELL=cell, RELU=relu, BARRIER=p.barrier, RESIDENT=p.resident,
                ACC=tl_dtype(acc_dtype(dtype)), UPCAST=upcast, PRECISION=precision,
                BLOCK_B=p.block_b, BLOCK_J=p.block_j, BLOCK_K=p.block_k,
                num_warps=p.num_warps, num_stages=NUM_STAGES)
    if p.barrier:
        opts["launch_cooperative_grid"] = True
    return opts


def _run(kernel, p, T, device, args, backward=False):
    """The whole loop in one launch (``p.barrier``), else one launch per step: t = 0 .. T-1,
    or T-1 .. 0 for the ``backward``."""
    if p.barrier:
        sem = torch.zeros(p.grid[2] * p.grid[1], dtype=torch.int32, device=device)
        kernel[p.grid](sem_ptr=sem, t0=0, t1=T, **args)
        return
    for t in (range(T - 1, -1, -1) if backward else range(T)):
        kernel[p.grid](sem_ptr=None, t0=t, t1=t + 1, **args)


def layer_forward(kern, inputs, p):
    """kernels.recurrence.layer_forward on this path (``p`` from ``chosen``): the same
    ``LayerBuffers`` (cs in the accumulation dtype, saved the cell's gates)."""
    from .recurrence import _input_projection   # the hoisted GEMM, shared with the step chain
    x, h0, c0, (w_ih, w_hh, b_ih, b_hh, _), batch_sizes = inputs
    lead = tuple(x.shape[:-3])
    T, B, _ = x.shape[-3:]
    H = w_hh.shape[-1]
    dt, dev = x.dtype, x.device
    cell = _cell(kern)[0]
    y = torch.empty((*lead, T, B, H), dtype=dt, device=dev)
    cs = torch.empty((*lead, T, B, H), dtype=acc_dtype(dt), device=dev) if cell == LSTM else None
    saved = torch.empty((*lead, T, B, 4 * H), dtype=dt, device=dev) if cell != RNN else None
    rows = None if batch_sizes is None else batch_sizes.to(device=dev, dtype=torch.int32)
    has_bias = b_ih is not None
    _run(_persistent_fwd_kernel, p, T, dev, dict(
        xp_ptr=_input_projection(x, w_ih), w_ptr=w_hh.contiguous(),
        b_ih_ptr=b_ih.contiguous() if has_bias else None,
        b_hh_ptr=b_hh.contiguous() if has_bias else None, h0_ptr=h0.contiguous(),
        c0_ptr=c0.contiguous() if cell == LSTM else None, y_ptr=y, cs_ptr=cs, saved_ptr=saved,
        batch_sizes_ptr=rows, T=T, B=B, H=H, HAS_BIAS=has_bias,
        HAS_BATCH_SIZES=rows is not None, **_meta(p, kern, dt)))
    return LayerBuffers(y, cs, saved, None)


def layer_backward_steps(kern, inputs, buffers, dy, dcn, p):
    """kernels.recurrence.layer_backward_steps on this path: the same ``StepGrads``."""
    _, h0, c0, (_, w_hh, _, _, _), batch_sizes = inputs
    y, cs, saved, _ = buffers
    lead = tuple(y.shape[:-3])
    T, B, H = y.shape[-3:]
    GH = w_hh.shape[-2]
    dt, dev = y.dtype, y.device
    acc = acc_dtype(dt)
    cell = _cell(kern)[0]
    dgx = torch.empty((*lead, T, B, GH), dtype=dt, device=dev)
    dgh = torch.empty_like(dgx) if cell == GRU else None
    carry = torch.empty((*lead, B, H), dtype=acc, device=dev)
    dc = torch.empty((*lead, B, H), dtype=acc, device=dev) if cell == LSTM else None
    rows = None if batch_sizes is None else batch_sizes.to(device=dev, dtype=torch.int32)
    has_dcn = cell == LSTM and dcn is not None
    _run(_persistent_bwd_kernel, p, T, dev, dict(
        dy_ptr=dy.contiguous(), w_ptr=w_hh.contiguous(),
        saved_ptr=None if saved is None else saved.contiguous(),
        h0_ptr=h0.contiguous() if cell != LSTM else None,
        y_ptr=y.contiguous() if cell != LSTM else None,
        c0_ptr=c0.contiguous() if cell == LSTM else None,
        cs_ptr=cs.contiguous() if cell == LSTM else None,
        dcn_ptr=dcn.contiguous() if has_dcn else None, dgx_ptr=dgx, dgh_ptr=dgh,
        carry_ptr=carry, dc_ptr=dc, batch_sizes_ptr=rows, T=T, B=B, H=H,
        HAS_BATCH_SIZES=rows is not None, HAS_DCN=has_dcn, **_meta(p, kern, dt)), backward=True)
    return StepGrads(dgx, dgx if dgh is None else dgh, carry, dc, None)
