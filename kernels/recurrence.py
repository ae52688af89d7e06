"""Launchers: one recurrent layer, one direction, whole sequence.

The input projection and every weight gradient are hoisted out of the time loop as single GEMMs
over all T*B rows; the time loop launches one fused step kernel per step.  A single step (a
cell, T == 1) computes its input projection inside the step kernel instead: one launch forward.
Buffers are time-major and contiguous; the initial states are read where they lie.  Packed
(variable-length) batches are sorted by decreasing length, so the rows active at step t are a
prefix 0..batch_sizes[t]-1; ended rows carry their state.  The launchers take and give the named
structures of ``kernels.layer``; a cell's kernels come as its ``CellKernels``.

Members: every tensor may carry a leading dimension M (x (M, T, B, I), w_hh (M, G*H, K), ...):
M independent recurrences of one shape, such as the two directions of a bidirectional layer,
run in the same launches (a third grid axis, ``kernels.common.member``), and the hoisted
GEMMs become batched GEMMs.  Stacked members take no projection.
"""
import threading

import torch
import triton

from . import config, cuda_graph, persistent
from .common import (acc_dtype, bound_launch, check_dtype, dot_flags, launch_once, step_tiles,
                     tl_dtype)
from .layer import ALL, LayerBuffers, LayerGrads, StepGrads

# Launch configurations by shape, dtype and the TF32 flag: computed once (host time per call).
_configs = {}


_cudnn_allow_tf32 = torch._C._get_cudnn_allow_tf32   # torch.backends.cudnn.allow_tf32, unwrapped


def _launch_config(B, H, K, dtype, tiles=None):
    """(grid, launch metadata, the graph key's part) of a step kernel; ``tiles`` (BLOCK_B,
    BLOCK_H, BLOCK_K, num_warps) forces the tile sizes (tile sweeps), else ``step_tiles``."""
    allow_tf32 = _cudnn_allow_tf32()
    key = (B, H, K, dtype, allow_tf32, tiles)
    cfg = _configs.get(key)
    if cfg is None:
        block_b, block_h, block_k, warps = tiles or step_tiles(B, H, K, dtype)
        # fp32 recurrent matmuls follow the flag torch's own RNNs (cuDNN) follow: TF32 by default.
        upcast, precision = dot_flags(dtype, allow_tf32)
        grid = (triton.cdiv(B, block_b), triton.cdiv(H, block_h))
        meta = dict(ACC=tl_dtype(acc_dtype(dtype)), UPCAST=upcast, PRECISION=precision,
                    BLOCK_B=block_b, BLOCK_H=block_h, BLOCK_K=block_k, num_warps=warps)
        cfg = _configs[key] = (grid, meta, (block_b, block_h, block_k, warps, precision))
    return cfg


def _graphable(T, rows, proj):
    # A single step launches directly (a graph would add copies in and out); packed batches vary
    # per call and the projected LSTM runs torch ops between steps: both launch step by step.
    return T > 1 and rows is None and not proj


def _active_rows(batch_sizes, device):
    """(device int32 tensor for the kernels, host list) of rows active per step, or (None, None)."""
    if batch_sizes is None:
        return None, None
    host = [int(n) for n in batch_sizes.tolist()]
    return torch.tensor(host, dtype=torch.int32, device=device), host


def _stream_key(dev):
    # Graph buffers are per thread and per stream: two threads or streams never share them.
    stream = torch.cuda.current_stream(dev).cuda_stream if dev.type == "cuda" else 0
    return threading.get_ident(), stream


def _input_projection(x, w_ih, out=None):
    # no autograd: ``out=`` refuses it, and the layer's gradients come from the backward here
    # (an autograd Function's forward runs with grad off already: no context to enter then)
    if torch.is_grad_enabled():
        with torch.no_grad():
            return _input_projection(x, w_ih, out)
    if x.dim() == 3:
        return torch.matmul(x, w_ih.t(), out=out)
    M, T, B, I = x.shape   # members: one batched GEMM
    rows = torch.bmm(x.reshape(M, T * B, I), w_ih.transpose(1, 2),
                     out=None if out is None else out.view(M, T * B, -1))
    return rows.view(M, T, B, -1) if out is None else out


def _check_step(batch_sizes, w_hr):
    # a 2-D x is one step of a cell: neither packed nor projected
    if batch_sizes is not None or w_hr is not None:
        raise ValueError("fastcells: one step without the time dimension (2-D) takes neither "
                         "batch_sizes nor a projection")


def _members(x, w_hr=None):
    """(lead, M): the leading member dimension of ``x`` ((), 1 when there is none)."""
    lead = tuple(x.shape[:-3])
    if lead and w_hr is not None:
        raise ValueError("fastcells: stacked members (fused directions) with a projection "
                         "(proj_size > 0) are not supported")
    return lead, (lead[0] if lead else 1)


def layer_forward(kern, inputs, tiles=None):
    """One layer, one direction of the cell whose kernels are ``kern`` (``CellKernels``), on
    ``inputs`` (``LayerInputs``, kernels.layer); ``tiles`` forces the tile sizes (see
    ``_launch_config``).  Returns ``LayerBuffers``.  A 2-D x (B, I) is one step without the
    time dimension (a cell, without packing or projection): the buffers come back 2-D too.
    """
    x, h0, c0, (w_ih, w_hh, b_ih, b_hh, w_hr), batch_sizes = inputs
    check_dtype(x.dtype)
    if x.dim() == 2:
        _check_step(batch_sizes, w_hr)
    if x.dim() == 2 or x.shape[-3] == 1 and batch_sizes is None and w_hr is None:
        return _single_step(kern, inputs)
    lead, M = _members(x, w_hr)
    plan = persistent.chosen(kern, inputs)
    if plan is not None:
        return persistent.layer_forward(kern, inputs, plan)
    T, B, I = x.shape[-3:]
    GH, K = w_hh.shape[-2:]
    H = GH // kern.gates
    dev, dt = x.device, x.dtype
    has_bias, proj = b_ih is not None, w_hr is not None
    batch_sizes_dev, batch_sizes_host = _active_rows(batch_sizes, dev)
    w = w_hh.contiguous()
    # the hoisted input projection (a single plain step fuses it instead: _single_step), written
    # straight into the graph's static buffer when graphed
    inputs = dict(w=w, h0=h0.contiguous(), xp=lambda out: _input_projection(x, w_ih, out))
    if has_bias:
        inputs.update(b1=b_ih.contiguous(), b2=b_hh.contiguous())
    if kern.has_cell:
        inputs["c0"] = c0.contiguous()
    outputs = dict(y=((*lead, T, B, K), dt, dev))
    if kern.has_cell:
        outputs["cs"] = ((*lead, T, B, H), dt if T == 1 else acc_dtype(dt), dev)
    if kern.saved:
        outputs["saved"] = ((*lead, T, B, kern.saved * H), dt, dev)
    if proj:
        outputs["m"] = ((T, B, H), dt, dev)
        inputs["w_hr_t"] = w_hr.t()
    grid, meta, tiles = _launch_config(B, H, K, dt, tiles)
    grid = (*grid, M)
    path = config.schedule()

    def steps(b):
        y = b["y"]
        if B == 0:
            return
        if H == 0:
            y.copy_(b["h0"].unsqueeze(-3).expand(*lead, T, B, K))  # nothing evolves
            return
        m, xp = b.get("m"), b["xp"]
        # the arguments bound once, each kernel taking the ones it reads; each step changes t
        # only (host time per step)
        launch = bound_launch(kern.fwd, grid, dict(
            xp_ptr=xp, x_ptr=None, w_ih_ptr=None, w_ptr=b["w"], b_ih_ptr=b.get("b1"),
            b_hh_ptr=b.get("b2"), h0_ptr=b["h0"], c0_ptr=b.get("c0"), y_ptr=y,
            cs_ptr=b.get("cs"), out_ptr=m if proj else y, saved_ptr=b.get("saved"),
            batch_sizes_ptr=batch_sizes_dev, T=T, B=B, H=H, K=K, I=I, HAS_BIAS=has_bias,
            HAS_BATCH_SIZES=batch_sizes_dev is not None, PROJ=proj, FUSE_X=False, **meta,
            **kern.consts,
        ))
        for t in range(T):
            launch(t)
            if proj:
                torch.mm(m[t], b["w_hr_t"], out=y[t])
                if batch_sizes_host is not None and batch_sizes_host[t] < B:
                    y[t, batch_sizes_host[t]:] = (b["h0"] if t == 0 else y[t - 1])[batch_sizes_host[t]:]

    key = None
    if _graphable(T, batch_sizes_dev, proj) and cuda_graph.enabled(dev):
        key = ("fwd", path, kern, lead, T, B, H, K, dt, dev, has_bias, tiles, _stream_key(dev))
    bufs = cuda_graph.run(key, dev, inputs, outputs, steps)
    keep = (lambda t: t.clone()) if key is not None else (lambda t: t)
    cs, saved, m = bufs.get("cs"), bufs.get("saved"), bufs.get("m")
    return LayerBuffers(keep(bufs["y"]), None if cs is None else keep(cs),
                        None if saved is None else keep(saved), None if m is None else keep(m))


def _single_step(kern, inputs):
    """``layer_forward`` for one step (a cell) without packing or projection: one fused launch
    (the input projection inside it), no graph, nothing allocated but the outputs.  x is
    (..., 1, B, I), or (B, I) without the time dimension; the outputs keep x's leading shape."""
    x, h0, c0, (w_ih, w_hh, b_ih, b_hh, _), _ = inputs
    rows = x.shape[:-1]
    B, I = rows[-1], x.shape[-1]
    lead = rows[:-2]   # the member dimension, if any
    GH, K = w_hh.shape[-2:]
    H = GH // kern.gates
    dt, dev = x.dtype, x.device
    y = torch.empty((*rows, K), dtype=dt, device=dev)
    cs = torch.empty((*rows, H), dtype=dt, device=dev) if kern.has_cell else None
    saved = (torch.empty((*rows, kern.saved * H), dtype=dt, device=dev) if kern.saved
             else None)
    if B and H:
        grid, meta, _ = _launch_config(B, H, K, dt)
        if lead:
            grid = (*grid, lead[0])
        w = w_hh.contiguous()
        has_bias = b_ih is not None
        # a dict display, not dict(...): one mapping built, not two (host time per step)
        launch_once(kern.fwd, grid, {
            "xp_ptr": None, "x_ptr": x.contiguous(), "w_ih_ptr": w_ih.contiguous(), "w_ptr": w,
            "b_ih_ptr": b_ih.contiguous() if has_bias else None,
            "b_hh_ptr": b_hh.contiguous() if has_bias else None, "h0_ptr": h0.contiguous(),
            "c0_ptr": c0.contiguous() if kern.has_cell else None, "y_ptr": y, "cs_ptr": cs,
            "out_ptr": y, "saved_ptr": saved, "batch_sizes_ptr": None, "t": 0, "T": 1, "B": B,
            "H": H, "K": K, "I": I, "HAS_BIAS": has_bias, "HAS_BATCH_SIZES": False,
            "PROJ": False, "FUSE_X": True, **meta, **kern.consts,
        })
    return LayerBuffers(y, cs, saved, None)


def layer_backward_steps(kern, inputs, buffers, dy, dcn=None, tiles=None):
    """The backward time loop of one layer from its ``inputs`` and the ``buffers`` its
    ``layer_forward`` returned: dy (T, B, K) dL/dy; dcn (B, H) dL/dc_{T-1} or None (zero).
    Returns ``StepGrads``.  One step without the time dimension (y and dy (B, K), from a 2-D x)
    gives 2-D gate gradients."""
    _, h0, c0, (_, w_hh, _, _, w_hr), batch_sizes = inputs
    y, cs, saved, m = buffers
    if y.dim() == 2:
        _check_step(batch_sizes, w_hr)
    if y.dim() == 2 or y.shape[-3] == 1 and batch_sizes is None and w_hr is None:
        return _single_step_backward(kern, inputs, buffers, dy, dcn)
    lead, M = _members(y, w_hr)
    plan = persistent.chosen(kern, inputs)
    if plan is not None:
        return persistent.layer_backward_steps(kern, inputs, buffers, dy, dcn, plan)
    batch_sizes_dev, batch_sizes_host = _active_rows(batch_sizes, y.device)
    T, B, K = y.shape[-3:]
    GH = w_hh.shape[-2]
    H = GH // kern.gates
    dev, dt = y.device, y.dtype
    acc = acc_dtype(dt)
    proj = w_hr is not None
    # The forward's buffers are contiguous as it returned them; a folded vmap can hand them
    # over as stride-0 expansions (B = 1), which the kernels would misread.
    inputs = dict(dy=dy.contiguous(), w=w_hh.contiguous(), h0=h0.contiguous(), y=y.contiguous())
    if saved is not None:
        inputs["saved"] = saved.contiguous()
    if kern.has_cell:
        inputs.update(c0=c0.contiguous(), cs=cs.contiguous())
        if dcn is not None:
            inputs["dcn"] = dcn.contiguous()
    if proj:
        inputs.update(w_acc=w_hh.to(acc), w_hr_acc=w_hr.to(acc), m=m.contiguous())
    outputs = dict(dgx=((*lead, T, B, GH), dt, dev), carry=((*lead, B, K), acc, dev))
    if kern.split_dgates:
        outputs["dgh"] = ((*lead, T, B, GH), dt, dev)
    if kern.has_cell:
        outputs["dc"] = ((*lead, B, H), acc, dev)
    if proj:
        outputs["dhs"] = ((T, B, K), acc, dev)
        outputs["dm"] = ((T, B, H), acc, dev)
    grid, meta, tiles = _launch_config(B, H, max(K, GH), dt, tiles)
    grid = (*grid, M)
    has_dcn = "dcn" in inputs
    path = config.schedule()

    def steps(b):
        if B == 0 or H == 0:
            _no_rows_grads(b)
            return
        if proj:
            b["carry"].zero_()
        launch = _bwd_step_launch(kern, (grid, meta), b, (T, B, H, K), batch_sizes_dev)
        for t in range(T - 1, -1, -1):
            if proj:
                _projected_dh(b, t, T, B, batch_sizes_host)
            launch(t)

    key = None
    if _graphable(T, batch_sizes_dev, proj) and cuda_graph.enabled(dev):
        key = ("bwd", path, kern, lead, T, B, H, K, dt, dev, has_dcn, tiles, _stream_key(dev))
    b = cuda_graph.run(key, dev, inputs, outputs, steps)
    keep = (lambda t: t.clone()) if key is not None else (lambda t: t)
    dgx = keep(b["dgx"])
    dgh = keep(b["dgh"]) if kern.split_dgates else dgx
    dc = keep(b["dc"]) if kern.has_cell else None
    return StepGrads(dgx, dgh, keep(b["carry"]), dc, b.get("dhs"))


def layer_grads(inputs, buffers, steps, needs=ALL, groups=1):
    """The hoisted GEMMs after the backward loop (``steps``: what ``layer_backward_steps``
    returned): ``LayerGrads``.  ``needs`` (``LayerGrads`` of bools): which gradients are wanted;
    one not wanted is None and costs no GEMM (an initial state of zeros, a frozen layer).

    With ``groups`` = N > 1 the batch rows are N interleaved problems (row b * N + n belongs to
    problem n: a vmapped layer folded into one launch), and every weight gradient gets a leading
    dimension N.  2-D tensors (y (B, K), no time dimension: ``layer_forward`` of a 2-D x) are
    one step."""
    dx, dh0, dw_ih, dw_hh, db_ih, db_hh, dw_hr = _grads(inputs, buffers, steps, needs, groups)
    dc, dt = steps.dc, buffers.y.dtype
    dc0 = None if dc is None or not needs.dc0 else dc if dc.dtype == dt else dc.to(dt)
    return LayerGrads(dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr)


def _grads(inputs, buffers, steps, needs, groups):
    """``layer_grads`` but dc0: (dx, dh0, dw_ih, dw_hh, db_ih, db_hh, dw_hr)."""
    x, h0, _, (w_ih, w_hh, b_ih, _, _), _ = inputs
    y, m = buffers.y, buffers.m
    dgx, dgh, carry, _, dhs = steps
    has_bias = b_ih is not None
    if y.dim() == 4:
        return _member_grads(inputs, y, steps, needs, groups)
    if y.dim() == 2:
        if y.shape[0] and groups == 1:
            return _step_grads(inputs, steps, needs)
        grads = _grads(inputs._replace(x=x[None]), buffers._replace(y=y[None]),
                       steps._replace(dgx=dgx[None], dgh=dgh[None]), needs, groups)
        return (None if grads[0] is None else grads[0][0], *grads[1:])
    T, B, K = y.shape
    GH = dgx.shape[-1]
    dt = y.dtype
    acc = acc_dtype(dt)
    if B == 0 or T == 0:
        zero = y.new_zeros
        lead = (groups,) if groups > 1 else ()
        dw_hr = None if dhs is None else zero(*lead, *w_hh.shape[1:2], m.shape[-1])
        return (torch.zeros_like(x) if needs.dx else None, carry.to(dt) if needs.dh0 else None,
                zero(*lead, *w_ih.shape), zero(*lead, *w_hh.shape),
                zero(*lead, GH) if has_bias else None, zero(*lead, GH) if has_bias else None,
                dw_hr)
    # 2-D views (T*B rows): a single step (a cell) then costs no more ops than it needs
    gx = dgx.view(T * B, GH)
    gh = gx if dgh is dgx else dgh.view(T * B, GH)
    gh0 = gh if T == 1 else gh[:B]
    dh0 = _dh0(carry, gh0, w_hh, dt) if needs.dh0 else None
    dx = torch.mm(gx, w_ih).view(T, B, -1) if needs.dx else None
    has_bias = has_bias and (needs.db_ih or needs.db_hh)
    dw_ih = dw_hh = dw_hr = None
    if groups == 1:
        if needs.dw_ih:
            dw_ih = gx.t().mm(x.reshape(T * B, -1))
        if needs.dw_hh:
            dw_hh = gh0.t().mm(h0)
            if T > 1:
                dw_hh = dw_hh.addmm_(gh[B:].t(), y[:T - 1].reshape(-1, K))
        db_ih = gx.sum(0) if has_bias else None
        # one sum where both biases see the same gate gradients (LSTM, RNN): the same tensor for
        # both (autograd's engine copies a gradient it receives twice before accumulating it;
        # the Function and the custom op that return these to torch.func and torch.compile
        # clone it: fastcells.rnn_args.unaliased)
        db_hh = (db_ih if dgh is dgx else gh.sum(0)) if has_bias else None
        if dhs is not None and needs.dw_hr:
            dw_hr = (dhs.reshape(T * B, K).t() @ m.reshape(T * B, -1).to(acc)).to(dt)
        return dx, dh0, dw_ih, dw_hh, db_ih, db_hh, dw_hr
    N = groups
    h_prev = y[:T - 1]
    g = lambda t: t.reshape(t.shape[0], B // N, N, t.shape[-1])  # noqa: E731
    if needs.dw_ih:
        dw_ih = torch.einsum("tbng,tbni->ngi", g(dgx), g(x))
    if needs.dw_hh:
        dw_hh = torch.einsum("bng,bnk->ngk", g(dgh[:1])[0], g(h0[None])[0])
        if T > 1:
            dw_hh = dw_hh + torch.einsum("tbng,tbnk->ngk", g(dgh[1:]), g(h_prev))
    db_ih = g(dgx).sum((0, 1)) if has_bias else None
    db_hh = g(dgh).sum((0, 1)) if has_bias else None
    if dhs is not None and needs.dw_hr:
        dw_hr = torch.einsum("tbnk,tbnh->nkh", g(dhs), g(m).to(acc)).to(dt)
    return dx, dh0, dw_ih, dw_hh, db_ih, db_hh, dw_hr


def _dh0(carry, gh0, w_hh, dt):
    """dL/dh0 = carry + dgh_0 W_hh: the step-0 recurrence the loop leaves to this GEMM."""
    if carry.dtype == dt:
        return torch.addmm(carry, gh0, w_hh)
    return (carry + gh0.mm(w_hh).to(carry.dtype)).to(dt)


def _step_grads(inputs, steps, needs):
    """``_grads`` of one step without the time dimension (a cell; B > 0): its GEMMs and
    nothing else (host time per step)."""
    x, h0, _, (w_ih, w_hh, b_ih, _, _), _ = inputs
    dgx, dgh, carry = steps.dgx, steps.dgh, steps.carry
    dh0 = _dh0(carry, dgh, w_hh, dgx.dtype) if needs.dh0 else None
    dx = dgx.mm(w_ih) if needs.dx else None
    dw_ih = dgx.t().mm(x) if needs.dw_ih else None
    dw_hh = dgh.t().mm(h0) if needs.dw_hh else None
    db_ih = db_hh = None
    if b_ih is not None and (needs.db_ih or needs.db_hh):
        # one sum where both biases see the same gate gradients (see _grads)
        db_ih = dgx.sum(0)
        db_hh = db_ih if dgh is dgx else dgh.sum(0)
    return dx, dh0, dw_ih, dw_hh, db_ih, db_hh, None


def _member_grads(inputs, y, steps, needs, groups):
    """``_grads`` for stacked members (a leading dimension M on every tensor): the same
    GEMMs, batched over the members."""
    if groups != 1:
        raise ValueError("fastcells: stacked members within a folded vmap are not supported")
    x, h0, _, (w_ih, w_hh, b_ih, _, _), _ = inputs
    dgx, dgh, carry = steps.dgx, steps.dgh, steps.carry
    has_bias = b_ih is not None
    M, T, B, K = y.shape
    GH = dgx.shape[-1]
    dt = y.dtype
    acc = acc_dtype(dt)
    if B == 0:
        zero = y.new_zeros
        bias = zero(M, GH) if has_bias else None
        return (torch.zeros_like(x) if needs.dx else None, carry.to(dt) if needs.dh0 else None,
                zero(w_ih.shape), zero(w_hh.shape), bias, None if bias is None else bias.clone(),
                None)
    gx = dgx.view(M, T * B, GH)
    gh = gx if dgh is dgx else dgh.view(M, T * B, GH)
    gh0 = gh[:, :B]
    dh0 = None
    if needs.dh0:
        if dt == acc:
            dh0 = torch.baddbmm(carry, gh0, w_hh)
        else:
            dh0 = (carry + torch.bmm(gh0, w_hh).to(acc)).to(dt)
    dx = torch.bmm(gx, w_ih).view(M, T, B, -1) if needs.dx else None
    dw_ih = dw_hh = None
    if needs.dw_ih:
        dw_ih = torch.bmm(gx.transpose(1, 2), x.reshape(M, T * B, -1))
    if needs.dw_hh:
        dw_hh = torch.bmm(gh0.transpose(1, 2), h0)
        if T > 1:
            dw_hh = dw_hh.baddbmm_(gh[:, B:].transpose(1, 2), y[:, :T - 1].reshape(M, -1, K))
    has_bias = has_bias and (needs.db_ih or needs.db_hh)
    db_ih = gx.sum(1) if has_bias else None
    db_hh = (db_ih if dgh is dgx else gh.sum(1)) if has_bias else None
    return dx, dh0, dw_ih, dw_hh, db_ih, db_hh, None


def _single_step_backward(kern, inputs, buffers, dy, dcn):
    """``layer_backward_steps`` for one step (a cell) without packing or projection: one launch,
    no graph, nothing allocated but the outputs (``_single_step`` is its forward); y and dy are
    (..., 1, B, K), or (B, K) without the time dimension, and dgx/dgh keep that shape."""
    _, h0, c0, (_, w_hh, _, _, _), _ = inputs
    y, cs, saved, _ = buffers
    rows = y.shape[:-1]
    B, K = rows[-1], y.shape[-1]
    lead = rows[:-2]   # the member dimension, if any
    GH = w_hh.shape[-2]
    H = GH // kern.gates
    dt, dev = y.dtype, y.device
    acc = acc_dtype(dt)
    b = dict(dy=dy.contiguous(), w=w_hh.contiguous(), h0=h0.contiguous(), y=y.contiguous(),
             dgx=torch.empty((*rows, GH), dtype=dt, device=dev),
             carry=torch.empty((*lead, B, K), dtype=acc, device=dev))
    if saved is not None:
        b["saved"] = saved.contiguous()
    if kern.split_dgates:
        b["dgh"] = torch.empty((*rows, GH), dtype=dt, device=dev)
    if kern.has_cell:
        b.update(c0=c0.contiguous(), cs=cs.contiguous(),
                 dc=torch.empty((*lead, B, H), dtype=acc, device=dev))
        if dcn is not None:
            b["dcn"] = dcn.contiguous()
    if B == 0 or H == 0:
        _no_rows_grads(b)
    else:
        grid, meta, _ = _launch_config(B, H, max(K, GH), dt)
        if lead:
            grid = (*grid, lead[0])
        args = _bwd_step_args(kern, meta, b, (1, B, H, K), None)
        args["t"] = 0
        launch_once(kern.bwd, grid, args)   # one launch: no binding for a loop (bound_launch)
    return StepGrads(b["dgx"], b.get("dgh", b["dgx"]), b["carry"], b.get("dc"), None)


def _bwd_step_launch(kern, launch_cfg, b, dims, rows):
    """``launch(t)``: the backward step kernel over the buffers in ``b``; ``launch_cfg`` (grid,
    meta) from ``_launch_config``; see ``_bwd_step_args``."""
    grid, meta = launch_cfg
    return bound_launch(kern.bwd, grid, _bwd_step_args(kern, meta, b, dims, rows))


def _bwd_step_args(kern, meta, b, dims, rows):
    """The backward step kernels' arguments but t over the buffers in ``b`` (absent ones:
    None; each kernel takes the ones it reads), with ``meta`` from ``_launch_config``, ``dims``
    (T, B, H, K) and ``rows`` the device batch sizes or None.  The projected LSTM's when ``b``
    holds dL/dm."""
    T, B, H, K = dims
    proj = "dm" in b
    return dict(
        dy_ptr=b["dm"] if proj else b["dy"], w_ptr=b["w"], saved_ptr=b.get("saved"),
        h0_ptr=b["h0"], y_ptr=b["y"], c0_ptr=b.get("c0"), cs_ptr=b.get("cs"),
        dcn_ptr=b.get("dcn"), dgx_ptr=b["dgx"], dgh_ptr=b.get("dgh"), carry_ptr=b["carry"],
        dc_ptr=b.get("dc"), batch_sizes_ptr=rows, T=T, B=B, H=H, K=K,
        HAS_BATCH_SIZES=rows is not None, PROJ=proj, HAS_DCN="dcn" in b, **meta, **kern.consts,
    )


def _no_rows_grads(b):
    """The backward buffers of a layer with no rows or no hidden units: zero gate gradients
    and carry, and dL/dc0 = dL/dc_{T-1}."""
    for name in ("dgx", "dgh", "carry", "dc", "dhs"):
        if name in b:
            b[name].zero_()
    if "dc" in b and "dcn" in b:
        b["dc"].copy_(b["dcn"])


def _projected_dh(b, t, T, B, batch_sizes_host):
    """dL/dm_t for the projected LSTM: the projection breaks the per-tile fusion of dh, so the
    two small matmuls run here; rows whose sequence has ended pass dh on through ``carry``."""
    carry = b["carry"]
    dh = b["dy"][t].to(carry.dtype) + carry
    if t + 1 < T:
        dh += b["dgx"][t + 1].to(carry.dtype) @ b["w_acc"]
    carry.zero_()
    if batch_sizes_host is not None and batch_sizes_host[t] < B:
        carry[batch_sizes_host[t]:] = dh[batch_sizes_host[t]:]
        dh[batch_sizes_host[t]:] = 0
    b["dhs"][t] = dh
    torch.mm(dh, b["w_hr_acc"], out=b["dm"][t])
