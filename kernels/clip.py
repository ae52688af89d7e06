"""The ``@triton.jit`` code of clip-by-global-norm: a multi-tensor norm and an in-place scale.

What the tables hold and how they are built is in :mod:`.clip_plan`; the launchers are in
:mod:`.clip_launch`.  Every tensor of one (device, dtype) group is a list of segments (rows of
``seg``, fields named by :class:`Seg`); the passes run one program per chunk of ``CHUNK``
elements of one segment (rows of ``chunk``: segment row, first element).

Pass 1 is three fixed-order launches with no float atomics, so the result is bit-identical run
to run: ``_clip_norm_partial_kernel`` (one per dtype) reduces each chunk to a partial in the
accumulation dtype (fp32, fp64 for fp64; half types are upcast before squaring);
``_clip_norm_tensor_kernel`` (one per dtype) reduces each tensor's partials in order to its norm,
rounded to the tensor's dtype as torch's per-tensor norms are; ``_clip_norm_total_kernel`` (one)
takes the norm of those norms in the promoted dtype, as torch does, and the clip coefficient
``clamp(max_norm / (total + 1e-6), max=1)`` with torch's roundings, both left on the device.
Pass 2, ``_clip_scale_kernel`` (one per dtype), scales every element in place by that coefficient.
For sharded tensors the per-tensor kernel stops before the root (``ROOT=False``): the sums are
reduced across ranks, then ``_clip_norm_root_kernel`` (one per dtype) takes the roots.

A chunk of a ``CONTIG`` segment (one dense run of stride 1 whose first element is 16-byte
aligned) is read as unmasked, aligned full blocks with 32-bit offsets, which the compiler turns
into 16-byte vector loads and stores (8 bf16 elements at a time), and one masked tail; any other
segment takes the general path: int64 linear indices split into up to four (size, stride) dims.

Scalars that must keep fp64 precision (the norm order, max_norm, eps) travel as the int64 bits
of a double, so nothing is rounded to fp32 before the kernel chooses its precision.
"""
import enum

import triton
import triton.language as tl


class Seg(enum.IntEnum):
    """The int64 fields of a row of the segment table (host and kernels use these names)."""
    ADDR = 0       # byte address of the segment's first element
    NUMEL = 1      # elements in the segment
    NDIM = 2       # dims kept after collapsing (1 to 4; the sizes and strides below are padded
    CONTIG = 3     # at the front with size 1, stride 0); CONTIG: 1 when dense, stride 1, aligned
    SIZE0 = 4
    SIZE1 = 5
    SIZE2 = 6
    SIZE3 = 7
    STRIDE0 = 8    # strides in elements, outer dim first
    STRIDE1 = 9
    STRIDE2 = 10
    STRIDE3 = 11


SEG_W = len(Seg)    # int64 fields per segment row
MAX_DIMS = 4        # dims a segment keeps after collapsing; gappier views are split
ALIGN = 16          # bytes: the alignment of a CONTIG segment's first element

# The same names as compile-time constants for the kernels.
_SEG_W: tl.constexpr = tl.constexpr(SEG_W)
_ADDR: tl.constexpr = tl.constexpr(int(Seg.ADDR))
_NUMEL: tl.constexpr = tl.constexpr(int(Seg.NUMEL))
_NDIM: tl.constexpr = tl.constexpr(int(Seg.NDIM))
_CONTIG: tl.constexpr = tl.constexpr(int(Seg.CONTIG))
_SIZE1: tl.constexpr = tl.constexpr(int(Seg.SIZE1))
_SIZE2: tl.constexpr = tl.constexpr(int(Seg.SIZE2))
_SIZE3: tl.constexpr = tl.constexpr(int(Seg.SIZE3))
_STRIDE0: tl.constexpr = tl.constexpr(int(Seg.STRIDE0))
_STRIDE1: tl.constexpr = tl.constexpr(int(Seg.STRIDE1))
_STRIDE2: tl.constexpr = tl.constexpr(int(Seg.STRIDE2))
_STRIDE3: tl.constexpr = tl.constexpr(int(Seg.STRIDE3))
_ALIGN: tl.constexpr = tl.constexpr(ALIGN)

# Norm kinds (a compile-time switch in the kernels).
L2: tl.constexpr = tl.constexpr(0)
L1: tl.constexpr = tl.constexpr(1)
L0: tl.constexpr = tl.constexpr(2)     # number of nonzero elements
LMAX: tl.constexpr = tl.constexpr(3)   # inf norm
LMIN: tl.constexpr = tl.constexpr(4)   # -inf norm
LPOW: tl.constexpr = tl.constexpr(5)   # any other p: (sum |x|^p)^(1/p)


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
def _rounded(x, SQRT: tl.constexpr):
    """Correctly rounded sqrt(x) (SQRT) or 1 / x.  fp32's tl.sqrt and division are approximate;
    their precise forms take fp32 only, and fp64's plain ones are correctly rounded already."""
    if x.dtype == tl.float64:
        r = tl.sqrt(x) if SQRT else 1.0 / x
    else:
        r = tl.sqrt_rn(x) if SQRT else tl.div_rn(tl.full(x.shape, 1.0, x.dtype), x)
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
        r = _rounded(s, True)
    elif KIND == LPOW:
        at_zero = tl.where(p > 0, 0.0, float("inf")).to(s.dtype)
        safe = tl.where(s == 0, 1.0, s)
        r = tl.where(s == 0, at_zero, tl.exp2(tl.log2(safe) / p))
    else:
        r = s
    return r



@triton.jit
def _chunk(seg_ptr, chunk_ptr, pid, CHUNK: tl.constexpr):
    """The chunk ``pid``: its segment's row pointer, its element range and whether the
    segment is CONTIG."""
    row = tl.load(chunk_ptr + 2 * pid)
    start = tl.load(chunk_ptr + 2 * pid + 1)
    seg = seg_ptr + row * _SEG_W
    stop = tl.minimum(start + CHUNK, tl.load(seg + _NUMEL))
    return seg, start, stop, tl.load(seg + _CONTIG)


@triton.jit
def _contig_base(seg, start, DTYPE: tl.constexpr):
    """Pointer to element ``start`` of a CONTIG segment."""
    return tl.load(seg + _ADDR).to(tl.pointer_type(DTYPE)) + start


@triton.jit
def _layout(seg, DTYPE: tl.constexpr):
    """The general path's view of a segment row: its base pointer, ndim, the inner three sizes
    and the four strides (loaded once, before a kernel's loop)."""
    return (tl.load(seg + _ADDR).to(tl.pointer_type(DTYPE)), tl.load(seg + _NDIM),
            tl.load(seg + _SIZE1), tl.load(seg + _SIZE2), tl.load(seg + _SIZE3),
            tl.load(seg + _STRIDE0), tl.load(seg + _STRIDE1), tl.load(seg + _STRIDE2),
            tl.load(seg + _STRIDE3))


@triton.jit
def _offsets(idx, nd, s1, s2, s3, t0, t1, t2, t3):
    """Element offsets of linear indices ``idx`` (int64) in a general segment."""
    if nd == 1:
        offs = idx * t3
    else:
        i3 = idx % s3
        r = idx // s3
        i2 = r % s2
        r = r // s2
        offs = (r // s1) * t0 + (r % s1) * t1 + i2 * t2 + i3 * t3
    return offs


@triton.jit
def _contig_full_blocks(n, BLOCK: tl.constexpr):
    """Elements of a CONTIG chunk of ``n`` covered by unmasked full blocks."""
    return (n - n % BLOCK).to(tl.int32)


@triton.jit
def _block_ptrs(base, i, BLOCK: tl.constexpr):
    """Pointers to the full block at ``i`` (a multiple of BLOCK) of a CONTIG chunk at ``base``,
    with their contiguity and alignment told to the compiler (so it emits 16-byte vector
    accesses; a pointer read from a table carries no alignment of its own).  The host
    guarantees it: a CONTIG segment starts ALIGN-aligned, a chunk starts a multiple of CHUNK
    elements in, and CHUNK and BLOCK elements are multiples of ALIGN bytes."""
    ptrs = base + i + tl.arange(0, BLOCK)
    return tl.max_contiguous(tl.multiple_of(ptrs, _ALIGN), BLOCK)


# ----------------------------------------------------------------------------------- kernels
@triton.jit(do_not_specialize=["p_bits"])
def _clip_norm_partial_kernel(
    seg_ptr,      # (S, SEG_W) int64 segment table (fields: Seg)
    chunk_ptr,    # (C, 2) int64 chunk table: segment row, first element
    partial_ptr,  # (C,) ACC out: the chunk's sum of terms (or max / min of |x|)
    p_bits,       # int64 bits of the double norm order (read when KIND == LPOW)
    DTYPE: tl.constexpr, ACC: tl.constexpr, KIND: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    seg, start, stop, contig = _chunk(seg_ptr, chunk_ptr, pid, CHUNK)
    p = _f64(p_bits).to(ACC)
    acc = _identity(BLOCK, ACC, KIND)
    lanes = tl.arange(0, BLOCK)
    if contig != 0:
        base = _contig_base(seg, start, DTYPE)
        n = stop - start
        full = _contig_full_blocks(n, BLOCK)
        every = lanes < BLOCK
        for i in range(0, full, BLOCK):
            x = tl.load(_block_ptrs(base, i, BLOCK)).to(ACC)
            acc = _combine(acc, _element_terms(x, p, KIND), every, KIND)
        if full < n:
            offs = full + lanes
            mask = offs < n
            x = tl.load(base + offs, mask=mask, other=0.0).to(ACC)
            acc = _combine(acc, _element_terms(x, p, KIND), mask, KIND)
    else:
        base, nd, s1, s2, s3, t0, t1, t2, t3 = _layout(seg, DTYPE)
        for off in range(start, stop, BLOCK):
            idx = off + lanes.to(tl.int64)
            mask = idx < stop
            offs = _offsets(idx, nd, s1, s2, s3, t0, t1, t2, t3)
            x = tl.load(base + offs, mask=mask, other=0.0).to(ACC)
            acc = _combine(acc, _element_terms(x, p, KIND), mask, KIND)
    tl.store(partial_ptr + pid, _reduce(acc, KIND))


@triton.jit(do_not_specialize=["p_bits"])
def _clip_norm_tensor_kernel(
    partial_ptr,  # (C,) ACC the chunks' partials from _clip_norm_partial_kernel
    range_ptr,    # (N, 2) int64 per tensor: first chunk, one past its last chunk
    norm_ptr,     # (N,) OUT_ACC out: each tensor's norm, rounded to DTYPE (ROOT), else the
                  #      reduced sum of terms (or max / min) before the root
    p_bits,       # int64 bits of the double norm order (read when KIND == LPOW)
    DTYPE: tl.constexpr, ACC: tl.constexpr, OUT_ACC: tl.constexpr, KIND: tl.constexpr,
    ROOT: tl.constexpr, BLOCK: tl.constexpr,
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
    if ROOT:
        out = _round(_root(_reduce(acc, KIND), p, KIND), DTYPE).to(OUT_ACC)
    else:
        out = _reduce(acc, KIND).to(OUT_ACC)
    tl.store(norm_ptr + pid, out)


@triton.jit(do_not_specialize=["n", "p_bits"])
def _clip_norm_root_kernel(
    norm_ptr,     # (n,) OUT_ACC in: per-tensor sums of terms (ROOT=False above, then reduced
                  #      across ranks); out: the norms, rounded to DTYPE
    n, p_bits,
    DTYPE: tl.constexpr, OUT_ACC: tl.constexpr, KIND: tl.constexpr, BLOCK: tl.constexpr,
):
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < n
    s = tl.load(norm_ptr + idx, mask=mask, other=0.0)
    norm = _root(s, _f64(p_bits).to(OUT_ACC), KIND)
    tl.store(norm_ptr + idx, _round(norm, DTYPE).to(OUT_ACC), mask=mask)


@triton.jit
def _coefficient(total, max_norm_bits, eps_bits, OUT: tl.constexpr, ACC: tl.constexpr):
    """clamp(max_norm / (total + eps), max=1) as torch evaluates it on a 0-d ``OUT`` tensor:
    ``x + eps``, then ``reciprocal(x) * max_norm`` (Tensor.__rtruediv__), each rounded to OUT;
    NaN stays NaN."""
    t = total.to(ACC)
    x = _round(t + _f64(eps_bits).to(ACC), OUT).to(ACC)
    r = _round(_rounded(x, False), OUT).to(ACC)
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
    seg_ptr,      # (S, SEG_W) int64 segment table (fields: Seg)
    chunk_ptr,    # (C, 2) int64 chunk table
    coef_ptr,     # () the clip coefficient (any float dtype; used in ACC)
    DTYPE: tl.constexpr, ACC: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    seg, start, stop, contig = _chunk(seg_ptr, chunk_ptr, pid, CHUNK)
    coef = tl.load(coef_ptr).to(ACC)
    lanes = tl.arange(0, BLOCK)
    if contig != 0:
        base = _contig_base(seg, start, DTYPE)
        n = stop - start
        full = _contig_full_blocks(n, BLOCK)
        for i in range(0, full, BLOCK):
            ptrs = _block_ptrs(base, i, BLOCK)
            tl.store(ptrs, _round(tl.load(ptrs).to(ACC) * coef, DTYPE))
        if full < n:
            offs = full + lanes
            mask = offs < n
            x = tl.load(base + offs, mask=mask).to(ACC)
            tl.store(base + offs, _round(x * coef, DTYPE), mask=mask)
    else:
        base, nd, s1, s2, s3, t0, t1, t2, t3 = _layout(seg, DTYPE)
        for off in range(start, stop, BLOCK):
            idx = off + lanes.to(tl.int64)
            mask = idx < stop
            ptrs = base + _offsets(idx, nd, s1, s2, s3, t0, t1, t2, t3)
            x = tl.load(ptrs, mask=mask).to(ACC)
            tl.store(ptrs, _round(x * coef, DTYPE), mask=mask)
