"""Launchers of the clip-by-global-norm kernels (:mod:`.clip`) over a plan's tables
(:mod:`.clip_plan`): pass 1, the total norm (and the clip coefficient); pass 2, the in-place
scale.  Nothing here reads a value back to the host."""
import math
import struct

import torch

import triton

from .clip import (L0, L1, L2, LMAX, LMIN, LPOW, _clip_coef_kernel, _clip_norm_partial_kernel,
                   _clip_norm_root_kernel, _clip_norm_tensor_kernel, _clip_norm_total_kernel,
                   _clip_scale_kernel)
from .common import acc_dtype, tl_dtype

EPS = 1e-6          # torch's: max_norm / (total + 1e-6)


def norm_kind(p):
    """The kernels' KIND for norm order ``p`` (a float)."""
    kinds = {2.0: L2, 1.0: L1, 0.0: L0, math.inf: LMAX, -math.inf: LMIN}
    return kinds.get(p, LPOW).value


def f64_bits(x):
    """The int64 bit pattern of the double ``x`` (decoded in the kernels by ``_f64``)."""
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


def multi_tensor_norm(plan, norm_type, max_norm=None, reduce_sums=None):
    """Pass 1: the total norm of every tensor of ``plan`` (torch's: the ``norm_type`` norm of the
    per-tensor norms), a 0-d tensor of ``plan.dtype`` on ``plan.device``; with ``max_norm``, also
    the clip coefficient (same dtype and device), else None.  Nothing is read back.

    ``reduce_sums``, when given, is called on the (N,) vector of per-tensor sums of terms (the
    sum of |x|^p, the count of nonzeros, or the max / min of |x|), in the order of
    ``plan.order``, before their roots are taken: the tensors are the local shards of sharded
    tensors, and it reduces the vector in place across the ranks that hold the other shards."""
    p = float(norm_type)
    kind, p_bits = norm_kind(p), f64_bits(p)
    out_acc = acc_dtype(plan.dtype)
    norms = torch.empty(plan.n_tensors, dtype=out_acc, device=plan.device)
    off = 0
    for g in plan.groups:
        acc = acc_dtype(g.dtype)
        partial = torch.empty(max(g.n_chunks, 1), dtype=acc, device=g.device)
        if g.n_chunks:
            _clip_norm_partial_kernel[(g.n_chunks,)](
                seg_ptr=g.seg, chunk_ptr=g.chunks, partial_ptr=partial, p_bits=p_bits,
                DTYPE=tl_dtype(g.dtype), ACC=tl_dtype(acc), KIND=kind,
                CHUNK=plan.chunk, BLOCK=plan.block)
        same = g.device == plan.device
        dst = norms[off:off + g.n_tensors] if same else torch.empty(
            g.n_tensors, dtype=out_acc, device=g.device)
        _clip_norm_tensor_kernel[(g.n_tensors,)](
            partial_ptr=partial, range_ptr=g.ranges, norm_ptr=dst, p_bits=p_bits,
            DTYPE=tl_dtype(g.dtype), ACC=tl_dtype(acc), OUT_ACC=tl_dtype(out_acc), KIND=kind,
            ROOT=reduce_sums is None, BLOCK=256)
        if not same:
            norms[off:off + g.n_tensors].copy_(dst, non_blocking=True)
        off += g.n_tensors
    if reduce_sums is not None:
        reduce_sums(norms)
        off = 0
        for g in plan.groups:
            _clip_norm_root_kernel[(triton.cdiv(g.n_tensors, 256),)](
                norm_ptr=norms[off:], n=g.n_tensors, p_bits=p_bits, DTYPE=tl_dtype(g.dtype),
                OUT_ACC=tl_dtype(out_acc), KIND=kind, BLOCK=256)
            off += g.n_tensors
    total = torch.empty((), dtype=plan.dtype, device=plan.device)
    coef = torch.empty((), dtype=plan.dtype, device=plan.device) if max_norm is not None else None
    _clip_norm_total_kernel[(1,)](
        norm_ptr=norms, total_ptr=total, coef_ptr=total if coef is None else coef,
        n=plan.n_tensors, p_bits=p_bits, max_norm_bits=f64_bits(max_norm or 0.0),
        eps_bits=f64_bits(EPS), OUT=tl_dtype(plan.dtype), ACC=tl_dtype(out_acc), KIND=kind,
        HAS_COEF=coef is not None, BLOCK=1024)
    return total, coef


def clip_coefficient(total, max_norm):
    """``clamp(max_norm / (total + 1e-6), max=1)`` for a 0-d floating ``total`` (kernel dtypes),
    with torch's roundings, on total's device."""
    coef = torch.empty((), dtype=total.dtype, device=total.device)
    _clip_coef_kernel[(1,)](
        total_ptr=total, coef_ptr=coef, max_norm_bits=f64_bits(max_norm), eps_bits=f64_bits(EPS),
        OUT=tl_dtype(total.dtype), ACC=tl_dtype(acc_dtype(total.dtype)))
    return coef


def multi_tensor_scale_(plan, coef):
    """Pass 2: multiply every tensor of ``plan`` in place by the 0-d device tensor ``coef``
    (one launch per (device, dtype); the product is computed in fp32, fp64 for fp64)."""
    if plan.overlapping:
        raise RuntimeError("multi_tensor_scale_: a tensor has internally overlapping memory")
    for g in plan.groups:
        if not g.n_chunks:
            continue
        c = coef if coef.device == g.device else coef.to(g.device, non_blocking=True)
        _clip_scale_kernel[(g.n_chunks,)](
            seg_ptr=g.seg, chunk_ptr=g.chunks, coef_ptr=c,
            DTYPE=tl_dtype(g.dtype), ACC=tl_dtype(acc_dtype(g.dtype)),
            CHUNK=plan.chunk, BLOCK=plan.block)
