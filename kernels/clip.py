"""Multi-tensor norm and in-place scale: the two passes of clip-by-global-norm.

Every tensor of one (device, dtype) group is described by a device-side int64 table, built once
per tensor list and cached (:func:`plan`):

``seg``    (S, SEG_W) one row per segment: address of its first element, numel, ndim, four sizes
           and four strides (elements, outer dim first, padded at the front with size 1 and
           stride 0).  A tensor is one segment after its dims are collapsed (any dense tensor,
           whatever its permutation, is one dim of stride 1); a gappy view that still needs more
           than four dims is split into several segments over its leading dims.
``chunk``  (C, 2) one row per program of the passes: segment row, first element.  Each chunk
           covers CHUNK elements of one segment (the last one fewer).
``range``  (N, 2) one row per tensor: its first chunk, one past its last chunk (its segments'
           chunks are contiguous).  A 0-size tensor has no chunks.

Pass 1 is three fixed-order launches with no float atomics, so the result is bit-identical run
to run: ``_clip_norm_partial_kernel`` (one per dtype) reduces each chunk to a partial in the
accumulation dtype (fp32, fp64 for fp64; half types are upcast before squaring);
``_clip_norm_tensor_kernel`` (one per dtype) reduces each tensor's partials in order to its norm,
rounded to the tensor's dtype as torch's per-tensor norms are; ``_clip_norm_total_kernel`` (one)
takes the norm of those norms in the promoted dtype, as torch does, and the clip coefficient
``clamp(max_norm / (total + 1e-6), max=1)`` with torch's roundings, both left on the device.
Pass 2, ``_clip_scale_kernel`` (one per dtype), scales every element in place by that coefficient.

Every offset is int64 (tensors past 2**31 elements).  Scalars that must keep fp64 precision
(the norm order, max_norm, eps) travel as the int64 bits of a double, so nothing is rounded to
fp32 before the kernel chooses its precision.
"""
import itertools
import math
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import reduce

import torch
import triton
import triton.language as tl

from .common import acc_dtype, interpreting, tl_dtype

SUPPORTED_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
SEG_W = 11          # int64 fields per segment row
_SEG_W: tl.constexpr = tl.constexpr(SEG_W)
MAX_DIMS = 4        # dims a segment keeps after collapsing; gappier views are split

# Norm kinds (a compile-time switch in the kernels).
L2: tl.constexpr = tl.constexpr(0)
L1: tl.constexpr = tl.constexpr(1)
L0: tl.constexpr = tl.constexpr(2)     # number of nonzero elements
LMAX: tl.constexpr = tl.constexpr(3)   # inf norm
LMIN: tl.constexpr = tl.constexpr(4)   # -inf norm
LPOW: tl.constexpr = tl.constexpr(5)   # any other p: (sum |x|^p)^(1/p)

EPS = 1e-6          # torch's: max_norm / (total + 1e-6)


def norm_kind(p):
    """The kernels' KIND for norm order ``p`` (a float)."""
    kinds = {2.0: L2, 1.0: L1, 0.0: L0, math.inf: LMAX, -math.inf: LMIN}
    return kinds.get(p, LPOW).value


def f64_bits(x):
    """The int64 bit pattern of the double ``x`` (decoded in the kernels by ``_f64``)."""
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


# ------------------------------------------------------------------------------------ jit helpers
@triton.jit
def _f64(bits):
    return bits.to(tl.int64).to(tl.float64, bitcast=True)


@triton.jit
def _round(x, DTYPE: tl.constexpr):
    """``x`` (fp32, or fp64 for DTYPE fp64/fp32) rounded to DTYPE, to nearest even.  bf16 is
    rounded by hand: Triton's interpreter truncates fp32 -> bf16 (a GPU rounds; both agree with
    this)."""
    if DTYPE == tl.bfloat16:
        bits = x.to(tl.int32, bitcast=True)
        bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & -65536
        r = tl.where(x != x, x, bits.to(tl.float32, bitcast=True)).to(DTYPE)
    else:
        r = x.to(DTYPE)
    return r


@triton.jit
def _sqrt(x):
    """Correctly rounded square root (tl.sqrt is approximate in fp32)."""
    if x.dtype == tl.float64:
        r = tl.sqrt(x)
    else:
        r = tl.sqrt_rn(x)
    return r


@triton.jit
def _recip(x):
    """Correctly rounded 1 / x (fp32 division is approximate unless asked)."""
    if x.dtype == tl.float64:
        r = 1.0 / x
    else:
        r = tl.div_rn(tl.full(x.shape, 1.0, x.dtype), x)
    return r


@triton.jit
def _pow_abs(a, p):
    """|x|^p for p not in {0, 1, 2, +-inf}: 0^p is 0 (p > 0) or inf (p < 0); NaN stays NaN."""
    at_zero = tl.where(p > 0, 0.0, float("inf")).to(a.dtype)
    safe = tl.where(a == 0, 1.0, a)
    return tl.where(a == 0, at_zero, tl.exp2(p * tl.log2(safe)))


@triton.jit
def _identity(BLOCK: tl.constexpr, ACC: tl.constexpr, KIND: tl.constexpr):
    if KIND == LMIN:
        acc = tl.full([BLOCK], float("inf"), ACC)
    else:
        acc = tl.zeros([BLOCK], ACC)
    return acc


@triton.jit
def _combine(acc, v, mask, KIND: tl.constexpr):
    """Fold values ``v`` (|x|, |x|^p or partials; ``mask`` off lanes ignored) into ``acc``.
    max/min keep a NaN once seen (torch's inf norms propagate NaN)."""
    if KIND == LMAX:
        v = tl.where(mask, v, 0.0)
        acc = tl.where((v > acc) | (v != v), v, acc)
    elif KIND == LMIN:
        v = tl.where(mask, v, float("inf"))
        acc = tl.where((v < acc) | (v != v), v, acc)
    else:
        acc += tl.where(mask, v, 0.0)
    return acc


@triton.jit
def _element_terms(x, p, KIND: tl.constexpr):
    """What each element contributes before the sum/max/min: x^2, |x|, [x != 0], |x|^p."""
    a = tl.abs(x)
    if KIND == L2:
        t = a * a
    elif KIND == L0:
        t = (a != 0).to(x.dtype)
    elif KIND == LPOW:
        t = _pow_abs(a, p)
    else:
        t = a
    return t


@triton.jit
def _reduce(acc, KIND: tl.constexpr):
    """Reduce the lanes of ``acc`` to a scalar (max/min: NaN if any lane is NaN)."""
    if KIND == LMAX:
        r = tl.max(acc, 0) + tl.sum(tl.where(acc == acc, 0.0, acc), 0)
    elif KIND == LMIN:
        r = tl.min(acc, 0) + tl.sum(tl.where(acc == acc, 0.0, acc), 0)
    else:
        r = tl.sum(acc, 0)
    return r


@triton.jit
def _root(s, p, KIND: tl.constexpr):
    """The norm from its reduced sum (or max/min/count)."""
    if KIND == L2:
        r = _sqrt(s)
    elif KIND == LPOW:
        at_zero = tl.where(p > 0, 0.0, float("inf")).to(s.dtype)
        safe = tl.where(s == 0, 1.0, s)
        r = tl.where(s == 0, at_zero, tl.exp2(tl.log2(safe) / p))
    else:
        r = s
    return r


@triton.jit
def _chunk(seg_ptr, chunk_ptr, pid, DTYPE: tl.constexpr, CHUNK: tl.constexpr):
    """The chunk ``pid``: its segment's base pointer and row, and its element range."""
    row = tl.load(chunk_ptr + 2 * pid)
    start = tl.load(chunk_ptr + 2 * pid + 1)
    seg = seg_ptr + row * _SEG_W
    base = tl.load(seg).to(tl.pointer_type(DTYPE))
    stop = tl.minimum(start + CHUNK, tl.load(seg + 1))
    return base, seg, start, stop


@triton.jit
def _offsets(idx, nd, s1, s2, s3, t0, t1, t2, t3):
    """Element offsets of linear indices ``idx`` in a segment (sizes s*, strides t*)."""
    if nd == 1:
        offs = idx * t3
    else:
        i3 = idx % s3
        r = idx // s3
        i2 = r % s2
        r = r // s2
        offs = (r // s1) * t0 + (r % s1) * t1 + i2 * t2 + i3 * t3
    return offs


# ----------------------------------------------------------------------------------- kernels
@triton.jit(do_not_specialize=["p_bits"])
def _clip_norm_partial_kernel(
    seg_ptr,      # (S, 11) int64 segment table (see the module docstring)
    chunk_ptr,    # (C, 2) int64 chunk table: segment row, first element
    partial_ptr,  # (C,) ACC out: the chunk's sum of terms (or max / min of |x|)
    p_bits,       # int64 bits of the double norm order (read when KIND == LPOW)
    DTYPE: tl.constexpr, ACC: tl.constexpr, KIND: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    base, seg, start, stop = _chunk(seg_ptr, chunk_ptr, pid, DTYPE, CHUNK)
    nd = tl.load(seg + 2)
    s1 = tl.load(seg + 4)
    s2 = tl.load(seg + 5)
    s3 = tl.load(seg + 6)
    t0 = tl.load(seg + 7)
    t1 = tl.load(seg + 8)
    t2 = tl.load(seg + 9)
    t3 = tl.load(seg + 10)
    p = _f64(p_bits).to(ACC)
    acc = _identity(BLOCK, ACC, KIND)
    for off in range(start, stop, BLOCK):
        idx = off + tl.arange(0, BLOCK).to(tl.int64)
        mask = idx < stop
        offs = _offsets(idx, nd, s1, s2, s3, t0, t1, t2, t3)
        x = tl.load(base + offs, mask=mask, other=0.0).to(ACC)
        acc = _combine(acc, _element_terms(x, p, KIND), mask, KIND)
    tl.store(partial_ptr + pid, _reduce(acc, KIND))


@triton.jit(do_not_specialize=["p_bits"])
def _clip_norm_tensor_kernel(
    partial_ptr,  # (C,) ACC the chunks' partials from _clip_norm_partial_kernel
    range_ptr,    # (N, 2) int64 per tensor: first chunk, one past its last chunk
    norm_ptr,     # (N,) OUT_ACC out: each tensor's norm, rounded to DTYPE
    p_bits,       # int64 bits of the double norm order (read when KIND == LPOW)
    DTYPE: tl.constexpr, ACC: tl.constexpr, OUT_ACC: tl.constexpr, KIND: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    first = tl.load(range_ptr + 2 * pid)
    end = tl.load(range_ptr + 2 * pid + 1)
    p = _f64(p_bits).to(ACC)
    acc = _identity(BLOCK, ACC, KIND)
    for c0 in range(first, end, BLOCK):
        cs = c0 + tl.arange(0, BLOCK).to(tl.int64)
        mask = cs < end
        acc = _combine(acc, tl.load(partial_ptr + cs, mask=mask, other=0.0), mask, KIND)
    norm = _root(_reduce(acc, KIND), p, KIND)
    tl.store(norm_ptr + pid, _round(norm, DTYPE).to(OUT_ACC))


@triton.jit
def _coefficient(total, max_norm_bits, eps_bits, OUT: tl.constexpr, ACC: tl.constexpr):
    """clamp(max_norm / (total + eps), max=1) as torch evaluates it on a 0-d ``OUT`` tensor:
    ``x + eps``, then ``reciprocal(x) * max_norm`` (Tensor.__rtruediv__), each rounded to OUT;
    NaN stays NaN."""
    t = total.to(ACC)
    x = _round(t + _f64(eps_bits).to(ACC), OUT).to(ACC)
    r = _round(_recip(x), OUT).to(ACC)
    c = _round(r * _f64(max_norm_bits).to(ACC), OUT).to(ACC)
    c = tl.where(c > 1.0, 1.0, c)
    return _round(c, OUT)


@triton.jit(do_not_specialize=["n", "p_bits", "max_norm_bits", "eps_bits"])
def _clip_norm_total_kernel(
    norm_ptr,     # (n,) ACC per-tensor norms (already rounded to their own dtypes)
    total_ptr,    # () OUT out: the norm of the norms
    coef_ptr,     # () OUT out: the clip coefficient (written when HAS_COEF)
    n, p_bits, max_norm_bits, eps_bits,
    OUT: tl.constexpr, ACC: tl.constexpr, KIND: tl.constexpr, HAS_COEF: tl.constexpr,
    BLOCK: tl.constexpr,
):
    p = _f64(p_bits).to(ACC)
    acc = _identity(BLOCK, ACC, KIND)
    for i0 in range(0, n, BLOCK):
        idx = i0 + tl.arange(0, BLOCK)
        mask = idx < n
        v = tl.load(norm_ptr + idx, mask=mask, other=0.0)
        acc = _combine(acc, _element_terms(v, p, KIND), mask, KIND)
    total = _round(_root(_reduce(acc, KIND), p, KIND), OUT)
    tl.store(total_ptr, total)
    if HAS_COEF:
        tl.store(coef_ptr, _coefficient(total, max_norm_bits, eps_bits, OUT, ACC))


@triton.jit(do_not_specialize=["max_norm_bits", "eps_bits"])
def _clip_coef_kernel(
    total_ptr,    # () OUT a total norm
    coef_ptr,     # () OUT out: its clip coefficient
    max_norm_bits, eps_bits,
    OUT: tl.constexpr, ACC: tl.constexpr,
):
    tl.store(coef_ptr, _coefficient(tl.load(total_ptr), max_norm_bits, eps_bits, OUT, ACC))


@triton.jit
def _clip_scale_kernel(
    seg_ptr,      # (S, 11) int64 segment table
    chunk_ptr,    # (C, 2) int64 chunk table
    coef_ptr,     # () the clip coefficient (any float dtype; used in ACC)
    DTYPE: tl.constexpr, ACC: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    base, seg, start, stop = _chunk(seg_ptr, chunk_ptr, pid, DTYPE, CHUNK)
    nd = tl.load(seg + 2)
    s1 = tl.load(seg + 4)
    s2 = tl.load(seg + 5)
    s3 = tl.load(seg + 6)
    t0 = tl.load(seg + 7)
    t1 = tl.load(seg + 8)
    t2 = tl.load(seg + 9)
    t3 = tl.load(seg + 10)
    coef = tl.load(coef_ptr).to(ACC)
    for off in range(start, stop, BLOCK):
        idx = off + tl.arange(0, BLOCK).to(tl.int64)
        mask = idx < stop
        ptrs = base + _offsets(idx, nd, s1, s2, s3, t0, t1, t2, t3)
        x = tl.load(ptrs, mask=mask).to(ACC)
        tl.store(ptrs, _round(x * coef, DTYPE), mask=mask)


# ------------------------------------------------------------------------------- host: tables
def default_chunk():
    """(CHUNK, BLOCK): elements per program and per loop step of the passes.  The interpreter
    runs programs one after another, so it gets fewer, numpy-wide ones."""
    return (8192, 1024) if interpreting() else (16384, 1024)


def _collapse(t):
    """(numel, [(size, stride), ...] outer first): size-1 dims dropped, dims sorted by stride,
    neighbours merged where one is the other's continuation.  A 0-d tensor is [(1, 1)]."""
    dims = sorted(((s, st) for s, st in zip(t.shape, t.stride()) if s != 1),
                  key=lambda d: d[1], reverse=True)
    numel = t.numel()
    if numel == 0:
        return 0, []
    merged = []
    for size, stride in dims:
        if merged and merged[-1][1] == stride * size:
            merged[-1] = (merged[-1][0] * size, stride)
        else:
            merged.append((size, stride))
    return numel, merged or [(1, 1)]


def _segments(t):
    """Rows of the segment table for tensor ``t`` (none when it is empty)."""
    numel, dims = _collapse(t)
    if numel == 0:
        return []
    lead, tail = dims[:-MAX_DIMS], dims[-MAX_DIMS:]
    pad = MAX_DIMS - len(tail)
    sizes = [1] * pad + [s for s, _ in tail]
    strides = [0] * pad + [st for _, st in tail]
    n = math.prod(sizes)
    item, addr = t.element_size(), t.data_ptr()
    rows = []
    for index in itertools.product(*(range(s) for s, _ in lead)):
        off = sum(i * st for i, (_, st) in zip(index, lead))
        rows.append([addr + off * item, n, len(tail)] + sizes + strides)
    return rows


def internal_overlap(t):
    """True when two elements of ``t`` certainly share memory (a stride-0 dim of size > 1):
    torch's MEM_OVERLAP_YES, where an in-place op refuses to write."""
    return any(st == 0 and s > 1 for s, st in zip(t.shape, t.stride()))


@dataclass
class Group:
    """The tables of the tensors of one (device, dtype)."""
    device: torch.device
    dtype: torch.dtype
    n_tensors: int
    n_chunks: int
    seg: torch.Tensor      # (S, SEG_W) int64 on device (views into one uploaded buffer)
    chunks: torch.Tensor   # (max(C, 1), 2)
    ranges: torch.Tensor   # (N, 2)
    host: torch.Tensor     # the (pinned) host copy, kept alive while the upload may be in flight


@dataclass
class Plan:
    """Everything the launches need for one list of tensors; cached across calls."""
    groups: list
    device: torch.device   # the first tensor's: where the total lives
    dtype: torch.dtype     # the promoted dtype of all tensors: the total's
    n_tensors: int
    overlapping: bool      # some tensor cannot be scaled in place (internal overlap)
    chunk: int
    block: int


def _upload(rows_seg, rows_chunk, rows_range, device):
    flat = [v for rows in (rows_seg, rows_chunk, rows_range) for row in rows for v in row]
    if device.type == "cuda":
        # pinned + non_blocking: no host synchronisation, capturable in a CUDA graph
        host = torch.tensor(flat, dtype=torch.int64, pin_memory=True)
        table = host.to(device, non_blocking=True)
    else:
        host = table = torch.tensor(flat, dtype=torch.int64)
    a = len(rows_seg) * SEG_W
    b = a + len(rows_chunk) * 2
    return (table[:a].view(-1, SEG_W), table[a:b].view(-1, 2), table[b:].view(-1, 2), host)


def _build_group(tensors, chunk):
    rows_seg, rows_chunk, rows_range = [], [], []
    for t in tensors:
        first = len(rows_chunk)
        for row in _segments(t):
            seg = len(rows_seg)
            rows_seg.append(row)
            rows_chunk.extend([seg, start] for start in range(0, row[1], chunk))
        rows_range.append([first, len(rows_chunk)])
    n_chunks = len(rows_chunk)
    if not rows_seg:
        rows_seg.append([0] * SEG_W)     # never read; keeps every pointer non-null
    if not rows_chunk:
        rows_chunk.append([0, 0])
    t0 = tensors[0]
    seg, chunks, ranges, host = _upload(rows_seg, rows_chunk, rows_range, t0.device)
    return Group(t0.device, t0.dtype, len(tensors), n_chunks, seg, chunks, ranges, host)


_CACHE = OrderedDict()
_CACHE_SIZE = 16
_CAPTURED = {}      # plans used while a CUDA graph was captured: the graph holds their addresses
_LOCK = threading.Lock()


def _capturing(tensors):
    return tensors[0].is_cuda and torch.cuda.is_current_stream_capturing()


def plan(tensors, chunk=None, block=None):
    """The tables for ``tensors`` (floating, strided; any layout), grouped by (device, dtype).

    Cached on what the kernels touch (each tensor's address, dtype, device, sizes, strides),
    so a new ``.grad`` object at the same place reuses the tables and any change rebuilds them;
    a steady training step launches with no host work beyond the lookup.  The tables hold
    addresses only, never the tensors: a cached table is used only when the tensors of the
    current call are at exactly those addresses.  Tables used while a CUDA graph is captured
    are kept for good (the graph reads them at every replay; warm up once before capturing)."""
    if interpreting() and any(t.device.type != "cpu" for t in tensors):
        raise RuntimeError("under TRITON_INTERPRET=1 the clip kernels read CPU tensors only "
                           "(their pointer tables hold host addresses)")
    d_chunk, d_block = default_chunk()
    chunk, block = chunk or d_chunk, block or d_block
    if chunk % block:
        raise ValueError(f"chunk ({chunk}) must be a multiple of block ({block})")
    key = (chunk, block) + tuple(
        (t.data_ptr(), t.dtype, t.device, t.shape, t.stride()) for t in tensors)
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
        else:
            hit = _CAPTURED.get(key)
        if hit is not None:
            if _capturing(tensors):
                _CAPTURED[key] = hit
            return hit
    by_group = {}
    for t in tensors:
        by_group.setdefault((t.device, t.dtype), []).append(t)
    groups = [_build_group(ts, chunk) for ts in by_group.values()]
    first = tensors[0].device
    groups.sort(key=lambda g: g.device != first)          # the total's device first
    result = Plan(groups, first, reduce(torch.promote_types, (t.dtype for t in tensors)),
                  len(tensors), any(internal_overlap(t) for t in tensors), chunk, block)
    with _LOCK:
        _CACHE[key] = result
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
        if _capturing(tensors):
            _CAPTURED[key] = result
    return result


def clear_cache():
    """Forget the cached tables (except those a captured CUDA graph may still read)."""
    with _LOCK:
        _CACHE.clear()


# ---------------------------------------------------------------------------------- launchers
def multi_tensor_norm(plan, norm_type, max_norm=None):
    """Pass 1: the total norm of every tensor of ``plan`` (torch's: the ``norm_type`` norm of the
    per-tensor norms), a 0-d tensor of ``plan.dtype`` on ``plan.device``; with ``max_norm``, also
    the clip coefficient (same dtype and device), else None.  Nothing is read back."""
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
            BLOCK=256)
        if not same:
            norms[off:off + g.n_tensors].copy_(dst, non_blocking=True)
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
