"""The pointer tables of clip-by-global-norm and their cache: what the kernels of :mod:`.clip`
read to find every element of every tensor, built once per tensor list.

Every tensor of one (device, dtype) group is described by a device-side int64 table:

``seg``    (S, SEG_W) one row per segment, fields named by :class:`.clip.Seg`: address of its
           first element, numel, ndim, CONTIG, four sizes and four strides (elements, outer dim
           first, padded at the front with size 1 and stride 0).  A tensor is one segment after
           its dims are collapsed, except that a dense tensor (whatever its permutation: one dim
           of stride 1) is a CONTIG segment from its first ALIGN-aligned element on, after a
           general one for the few elements before it (a view at an odd offset, as FSDP2's
           shards are); a gappy view that still needs more than four dims is split into
           several segments over its leading dims.
``chunk``  (C, 2) one row per program of the passes: segment row, first element.  Each chunk
           covers CHUNK elements of one segment (the last one fewer).
``range``  (N, 2) one row per tensor: its first chunk, one past its last chunk (its segments'
           chunks are contiguous).  A 0-size tensor has no chunks.

Every offset is int64 (tensors past 2**31 elements).

The cache (:func:`plan`, :func:`cached`) is keyed on what the kernels touch and nothing else:
each tensor's address, dtype, device, Python type and numel (and its sizes and strides when
some tensor is not contiguous), read with one C-level ``map`` per field, so a call on the same
gradients costs a few hundred nanoseconds per tensor of host time.  A gradient replaced, resized, restrided, moved or set to None gives another key,
hence other tables; a new ``.grad`` object at the same place with the same layout reuses them.
"""
import itertools
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import reduce
from operator import attrgetter

import torch

from .clip import ALIGN, MAX_DIMS, SEG_W, Seg
from .common import SUPPORTED_DTYPES, interpreting

_KERNEL_TYPES = (torch.Tensor, torch.nn.Parameter)     # subclasses go to torch's own clip


def default_chunk():
    """(CHUNK, BLOCK): elements per program and per loop step of the passes.  The interpreter
    runs programs one after another, so it gets fewer, numpy-wide ones."""
    return (8192, 1024) if interpreting() else (16384, 1024)


def kernel_ready(t):
    """The fused kernels can read ``t``: a plain strided tensor of a supported dtype on a
    CUDA device (or the CPU, for the interpreter)."""
    return (type(t) in _KERNEL_TYPES and t.layout == torch.strided
            and t.dtype in SUPPORTED_DTYPES and t.device.type in ("cuda", "cpu"))


# --------------------------------------------------------------------------------- one tensor
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


def _row(addr, ndim, sizes, strides, contig):
    """A row of the segment table: ``sizes`` and ``strides`` padded to MAX_DIMS."""
    row = [0] * SEG_W
    row[Seg.ADDR], row[Seg.NUMEL], row[Seg.CONTIG] = addr, math.prod(sizes), int(contig)
    row[Seg.NDIM] = ndim
    row[Seg.SIZE0:Seg.SIZE3 + 1] = sizes
    row[Seg.STRIDE0:Seg.STRIDE3 + 1] = strides
    return row


def _dense_rows(addr, n, item):
    """A dense run of ``n`` elements at ``addr``: one CONTIG row from the first ALIGN-aligned
    element on, after a general row for the (at most ALIGN / item - 1) elements before it."""
    head = min(n, (-addr) % ALIGN // item)
    rows = [_row(addr, 1, [1, 1, 1, head], [0, 0, 0, 1], False)] if head else []
    if n > head:
        rows.append(_row(addr + head * item, 1, [1, 1, 1, n - head], [0, 0, 0, 1], True))
    return rows


def _segments(t):
    """Rows of the segment table for tensor ``t`` (none when it is empty)."""
    numel, dims = _collapse(t)
    if numel == 0:
        return []
    item, addr = t.element_size(), t.data_ptr()
    if len(dims) == 1 and dims[0][1] == 1:
        return _dense_rows(addr, numel, item)
    lead, tail = dims[:-MAX_DIMS], dims[-MAX_DIMS:]
    pad = MAX_DIMS - len(tail)
    sizes = [1] * pad + [s for s, _ in tail]
    strides = [0] * pad + [st for _, st in tail]
    rows = []
    for index in itertools.product(*(range(s) for s, _ in lead)):
        start = addr + sum(i * st for i, (_, st) in zip(index, lead)) * item
        rows.append(_row(start, len(tail), sizes, strides, False))
    return rows


def internal_overlap(t):
    """True when two elements of ``t`` certainly share memory (a stride-0 dim of size > 1):
    torch's MEM_OVERLAP_YES, where an in-place op refuses to write."""
    return any(st == 0 and s > 1 for s, st in zip(t.shape, t.stride()))


# ----------------------------------------------------------------------------------- the plan
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
    """Everything the launches need for one list of tensors, and what the API checks of them
    once (a cache hit has the same answers); cached across calls."""
    groups: list
    device: torch.device   # the first tensor's: where the total lives
    dtype: torch.dtype     # the promoted dtype of all tensors: the total's
    n_tensors: int
    overlapping: bool      # some tensor cannot be scaled in place (internal overlap)
    chunk: int
    block: int
    ready: bool            # every tensor passes kernel_ready
    all_cuda: bool         # every tensor is on a CUDA device (backend "auto" runs the kernels)
    devices: tuple         # the distinct devices, in first-seen order
    firsts: tuple          # the index of the first tensor on each of them
    order: tuple           # the tensors' indices in the order of the passes' per-tensor norms


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
            rows_chunk.extend([seg, start] for start in range(0, row[Seg.NUMEL], chunk))
        rows_range.append([first, len(rows_chunk)])
    n_chunks = len(rows_chunk)
    if not rows_seg:
        rows_seg.append([0] * SEG_W)     # never read; keeps every pointer non-null
    if not rows_chunk:
        rows_chunk.append([0, 0])
    t0 = tensors[0]
    seg, chunks, ranges, host = _upload(rows_seg, rows_chunk, rows_range, t0.device)
    return Group(t0.device, t0.dtype, len(tensors), n_chunks, seg, chunks, ranges, host)


def _build(tensors, chunk, block):
    by_group = {}
    for i, t in enumerate(tensors):
        by_group.setdefault((t.device, t.dtype), []).append(i)
    first = tensors[0].device
    members = sorted(by_group.values(), key=lambda ix: tensors[ix[0]].device != first)
    groups = [_build_group([tensors[i] for i in ix], chunk) for ix in members]  # first's first
    firsts = {}
    for i, t in enumerate(tensors):
        firsts.setdefault(t.device, i)
    return Plan(groups, first, reduce(torch.promote_types, (t.dtype for t in tensors)),
                len(tensors), any(internal_overlap(t) for t in tensors), chunk, block,
                all(kernel_ready(t) for t in tensors), all(t.is_cuda for t in tensors),
                tuple(firsts), tuple(firsts.values()), tuple(i for ix in members for i in ix))


# ---------------------------------------------------------------------------------- the cache
_CACHE = OrderedDict()
_CACHE_SIZE = 16
_CAPTURED = {}      # plans used while a CUDA graph was captured: the graph holds their addresses
_LOCK = threading.Lock()
_MRU = None         # the plan last found or added: already at the end of _CACHE
_DATA_PTR, _STRIDE, _SIZE = torch.Tensor.data_ptr, torch.Tensor.stride, torch.Tensor.size
_IS_CONTIGUOUS, _NUMEL = torch.Tensor.is_contiguous, torch.Tensor.numel
_DTYPE, _DEVICE = attrgetter("dtype"), attrgetter("device")


def key(tensors, chunk=None, block=None):
    """The cache key of ``tensors``: every field a plan depends on, one C-level ``map`` per
    field (the host cost of a cached call is mostly this).  When every tensor is contiguous,
    its tables depend on its address and numel only, not on its sizes and strides (collapsed
    to one dim of stride 1), so those, the dearest fields to read, are left out.  ``data_ptr``
    raises for a tensor without storage (a DTensor, a sparse tensor): such tensors have no
    plan."""
    if chunk is None:
        chunk, block = default_chunk()
    common = (chunk, block, tuple(map(_DATA_PTR, tensors)), tuple(map(_DTYPE, tensors)),
              tuple(map(_DEVICE, tensors)), tuple(map(type, tensors)))
    if all(map(_IS_CONTIGUOUS, tensors)):
        return common + (tuple(map(_NUMEL, tensors)),)
    return common + (tuple(map(_SIZE, tensors)), tuple(map(_STRIDE, tensors)))


def _capturing(tensors):
    return tensors[0].is_cuda and torch.cuda.is_current_stream_capturing()


def _hit(k, tensors):
    global _MRU
    with _LOCK:
        hit = _CACHE.get(k)      # hashing the key is most of a lookup: once in a steady loop
        if hit is not None:
            if hit is not _MRU:
                _CACHE.move_to_end(k)
                _MRU = hit
        else:
            hit = _CAPTURED.get(k)
        if hit is not None and _capturing(tensors):
            _CAPTURED[k] = hit
    return hit


def cached(tensors):
    """The cached plan of ``tensors`` (default chunk and block), or None: a miss, or some item
    that is not a tensor with storage."""
    try:
        k = key(tensors)
    except (RuntimeError, TypeError):      # no storage (DTensor, sparse), or not a tensor
        return None
    return _hit(k, tensors)


def plan(tensors, chunk=None, block=None):
    """The tables for ``tensors`` (floating, strided; any layout), grouped by (device, dtype).

    Cached on what the kernels touch (:func:`key`), so a new ``.grad`` object at the same place
    reuses the tables and any change rebuilds them; a steady training step launches with no
    host work beyond the lookup.  The tables hold addresses only, never the tensors: a cached
    table is used only when the tensors of the current call are at exactly those addresses.
    Tables used while a CUDA graph is captured are kept for good (the graph reads them at every
    replay; warm up once before capturing)."""
    global _MRU
    if interpreting() and any(t.device.type != "cpu" for t in tensors):
        raise RuntimeError("under TRITON_INTERPRET=1 the clip kernels read CPU tensors only "
                           "(their pointer tables hold host addresses)")
    d_chunk, d_block = default_chunk()
    chunk, block = chunk or d_chunk, block or d_block
    if chunk % block or chunk % ALIGN:
        raise ValueError(f"chunk ({chunk}) must be a multiple of block ({block}) and of {ALIGN}")
    k = key(tensors, chunk, block)
    hit = _hit(k, tensors)
    if hit is not None:
        return hit
    result = _build(tensors, chunk, block)
    with _LOCK:
        _CACHE[k] = result
        _MRU = result
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
        if _capturing(tensors):
            _CAPTURED[k] = result
    return result


def clear_cache():
    """Forget the cached tables (except those a captured CUDA graph may still read)."""
    with _LOCK:
        _CACHE.clear()
