"""Launchers: one recurrent layer, one direction, whole sequence.

The input projection and every weight gradient are hoisted out of the time loop as single GEMMs
over all T*B rows; the time loop launches one fused step kernel per step.  Buffers are
time-major and contiguous.  Packed (variable-length) batches are sorted by decreasing length, so
the rows active at step t are a prefix 0..batch_sizes[t]-1; ended rows carry their state.
"""
from dataclasses import dataclass, field

import torch
import triton

from . import cuda_graph
from .common import acc_dtype, check_dtype, dot_flags, step_tiles, tl_dtype
from .gru import _gru_bwd_step_kernel, _gru_fwd_step_kernel
from .lstm import _lstm_bwd_step_kernel, _lstm_fwd_step_kernel
from .rnn import _rnn_bwd_step_kernel, _rnn_fwd_step_kernel


@dataclass(frozen=True)
class CellKernels:
    gates: int          # gate blocks of H in W_ih / W_hh
    saved: int          # blocks of H the forward pass saves per step (0: none)
    fwd: object
    bwd: object
    has_cell: bool = False   # LSTM: a second state c
    split_dgates: bool = False  # GRU: x-side and h-side gate gradients differ
    extra: dict = field(default_factory=dict)


CELLS = {
    "lstm": CellKernels(4, 4, _lstm_fwd_step_kernel, _lstm_bwd_step_kernel, has_cell=True),
    "gru": CellKernels(3, 4, _gru_fwd_step_kernel, _gru_bwd_step_kernel, split_dgates=True),
    "rnn_tanh": CellKernels(1, 0, _rnn_fwd_step_kernel, _rnn_bwd_step_kernel, extra={"RELU": False}),
    "rnn_relu": CellKernels(1, 0, _rnn_fwd_step_kernel, _rnn_bwd_step_kernel, extra={"RELU": True}),
}


def _launch_config(B, H, K, dtype):
    block_b, block_h, block_k, warps = step_tiles(B, H, K, dtype)
    # fp32 recurrent matmuls follow the flag torch's own RNNs (cuDNN) follow: TF32 by default.
    upcast, precision = dot_flags(dtype, torch.backends.cudnn.allow_tf32)
    grid = (triton.cdiv(B, block_b), triton.cdiv(H, block_h))
    meta = dict(ACC=tl_dtype(acc_dtype(dtype)), UPCAST=upcast, PRECISION=precision,
                BLOCK_B=block_b, BLOCK_H=block_h, BLOCK_K=block_k, num_warps=warps)
    return grid, meta


# Even one step (a cell) is replayed: a Triton launch from Python costs more host time than the
# copies in and clones out of a graph (H200, LSTMCell B=64 H=512 fp32 forward: 0.37 ms a call
# graphed, 0.79 ms launched directly; bench/results/2026-11-26_NVIDIA-H200_run3).
MIN_GRAPH_STEPS = 1


def _graphable(T, n_dev, proj):
    # Packed batches vary per call: launched step by step, as is the projected LSTM.
    return T >= MIN_GRAPH_STEPS and n_dev is None and not proj


def _tiles_key(meta):
    return tuple(meta[k] for k in ("BLOCK_B", "BLOCK_H", "BLOCK_K", "num_warps", "PRECISION"))


def _active_rows(batch_sizes, device):
    """(device int32 tensor for the kernels, host list) of rows active per step, or (None, None)."""
    if batch_sizes is None:
        return None, None
    host = [int(n) for n in batch_sizes.tolist()]
    return torch.tensor(host, dtype=torch.int32, device=device), host


def layer_forward(mode, x, w_ih, w_hh, b_ih, b_hh, h0, c0=None, batch_sizes=None, w_hr=None):
    """One layer, one direction.

    x (T, B, I); w_ih (G*H, I); w_hh (G*H, K); b_ih, b_hh (G*H,) or None; h0 (B, K);
    c0 (B, H) for the LSTM; batch_sizes (T,) rows active per step or None; w_hr (K, H) the LSTM
    projection or None (then K == H).
    Returns (hs, cs, saved, m): hs (T+1, B, K) the states, slot 0 a copy of h0, slots 1..T the
    output, slot T the final state; cs (T+1, B, H) the LSTM's cell states in the accumulation
    dtype (else None); saved the per-step gates the backward pass reads (None for the RNN);
    m (T, B, H) the LSTM's pre-projection output when projected (else None).
    """
    spec = CELLS[mode]
    check_dtype(x.dtype)
    T, B, _ = x.shape
    GH, K = w_hh.shape
    H = GH // spec.gates
    dev, dt = x.device, x.dtype
    has_bias, proj = b_ih is not None, w_hr is not None
    n_dev, n_host = _active_rows(batch_sizes, dev)
    inputs = dict(xp=torch.matmul(x, w_ih.t()).contiguous(),  # hoisted input projection
                  w=w_hh.contiguous(), h0=h0.contiguous())
    if has_bias:
        inputs.update(b1=b_ih.contiguous(), b2=b_hh.contiguous())
    if spec.has_cell:
        inputs["c0"] = c0.contiguous()
    if proj:
        inputs["w_hr_t"] = w_hr.t().contiguous()
    outputs = dict(hs=((T + 1, B, K), dt, dev))
    if spec.has_cell:
        outputs["cs"] = ((T + 1, B, H), acc_dtype(dt), dev)
    if spec.saved:
        outputs["saved"] = ((T, B, spec.saved * H), dt, dev)
    if proj:
        outputs["m"] = ((T, B, H), dt, dev)
    grid, meta = _launch_config(B, H, K, dt)

    def steps(b):
        hs, cs, m = b["hs"], b.get("cs"), b.get("m")
        hs[0].copy_(b["h0"])
        if cs is not None:
            cs[0].copy_(b["c0"])
        if B == 0:
            return
        if H == 0:
            hs[1:].copy_(hs[:1].expand(T, B, K))  # nothing evolves
            return
        for t in range(T):
            spec.fwd[grid](
                xp_ptr=b["xp"], w_ptr=b["w"], b_ih_ptr=b.get("b1", b["w"]),
                b_hh_ptr=b.get("b2", b["w"]), hs_ptr=hs, cs_ptr=hs if cs is None else cs,
                out_ptr=m if proj else hs[1:], saved_ptr=b.get("saved", hs),
                n_ptr=b["xp"] if n_dev is None else n_dev, t=t, B=B, H=H, K=K,
                HAS_BIAS=has_bias, HAS_LENGTHS=n_dev is not None, PROJ=proj,
                **meta, **spec.extra,
            )
            if proj:
                torch.mm(m[t], b["w_hr_t"], out=hs[t + 1])
                if n_host is not None and n_host[t] < B:
                    hs[t + 1, n_host[t]:] = hs[t, n_host[t]:]

    key = None if not _graphable(T, n_dev, proj) else ("fwd", mode, T, B, H, K, dt, dev,
                                                        has_bias, _tiles_key(meta))
    bufs = cuda_graph.run(key, inputs, outputs, steps)
    keep = (lambda t: t.clone()) if key is not None and cuda_graph.enabled(dev) else (lambda t: t)
    cs, saved, m = bufs.get("cs"), bufs.get("saved"), bufs.get("m")
    return (keep(bufs["hs"]), None if cs is None else keep(cs),
            None if saved is None else keep(saved), None if m is None else keep(m))


def layer_backward(mode, x, w_ih, w_hh, has_bias, hs, cs, saved, m, batch_sizes, dy, dhn,
                   dcn=None, w_hr=None, need_input_grad=True):
    """Gradients of one layer from what ``layer_forward`` returned (hs, cs, saved, m):
    returns dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr (None where absent).

    dy (T, B, K), dhn (B, K), dcn (B, H) may be None (zero)."""
    spec = CELLS[mode]
    n_dev, n_host = _active_rows(batch_sizes, x.device)
    T, B, K = hs.shape[0] - 1, hs.shape[1], hs.shape[2]
    GH = w_hh.shape[0]
    H = GH // spec.gates
    dev, dt = x.device, x.dtype
    acc = acc_dtype(dt)
    proj = w_hr is not None
    inputs = dict(
        dy=torch.zeros(T, B, K, device=dev, dtype=dt) if dy is None else dy.contiguous(),
        w=w_hh.contiguous(), hs=hs,
        carry0=torch.zeros(B, K, device=dev, dtype=acc) if dhn is None else dhn.to(acc))
    if saved is not None:
        inputs["saved"] = saved
    if spec.has_cell:
        inputs["cs"] = cs
        inputs["dc0"] = torch.zeros(B, H, device=dev, dtype=acc) if dcn is None else dcn.to(acc)
    if proj:
        inputs.update(w_acc=w_hh.to(acc), w_hr_acc=w_hr.to(acc), m=m)
    outputs = dict(dgx=((T, B, GH), dt, dev), carry=((B, K), acc, dev))
    if spec.split_dgates:
        outputs["dgh"] = ((T, B, GH), dt, dev)
    if spec.has_cell:
        outputs["dc"] = ((B, H), acc, dev)
    if proj:
        outputs["dhs"] = ((T, B, K), acc, dev)
        outputs["dm"] = ((T, B, H), acc, dev)
    grid, meta = _launch_config(B, H, max(K, GH), dt)

    def steps(b):
        carry, dc, dgx = b["carry"], b.get("dc"), b["dgx"]
        dgh = b.get("dgh", dgx)
        carry.copy_(b["carry0"])
        if dc is not None:
            dc.copy_(b["dc0"])
        if B == 0 or H == 0:
            dgx.zero_()
            dgh.zero_()
            if proj:
                b["dhs"].zero_()
            return
        for t in range(T - 1, -1, -1):
            if proj:
                _projected_dh(b, t, T, B, n_host)
            spec.bwd[grid](
                dy_ptr=b["dm"] if proj else b["dy"], w_ptr=b["w"], saved_ptr=b.get("saved", b["hs"]),
                hs_ptr=b["hs"], cs_ptr=b["hs"] if dc is None else b["cs"], dgx_ptr=dgx,
                dgh_ptr=dgh, carry_ptr=carry, dc_ptr=carry if dc is None else dc,
                n_ptr=dgx if n_dev is None else n_dev, t=t, T=T, B=B, H=H, K=K,
                HAS_LENGTHS=n_dev is not None, PRE=proj, **meta, **spec.extra,
            )

    key = None if not _graphable(T, n_dev, proj) else ("bwd", mode, T, B, H, K, dt, dev,
                                                        _tiles_key(meta))
    b = cuda_graph.run(key, inputs, outputs, steps)
    dgx = b["dgx"]
    dgh = b.get("dgh", dgx)
    # Hoisted GEMMs over all T*B rows (they read the step buffers before any later replay).
    dgx2 = dgx.reshape(T * B, GH)
    dgh2 = dgh.reshape(T * B, GH)
    dh0 = b["carry"].clone()
    if T > 0:
        dh0 += dgh[0].to(acc) @ w_hh.to(acc)
    dw_hh = dgh2.t() @ hs[:T].reshape(T * B, K)
    dw_ih = dgx2.t() @ x.reshape(T * B, x.shape[-1])  # not -1: ambiguous when T * B == 0
    dx = torch.matmul(dgx, w_ih) if need_input_grad else None
    db_ih = dgx2.sum(0) if has_bias else None
    db_hh = dgh2.sum(0) if has_bias else None
    dw_hr = None
    if proj:
        dw_hr = (b["dhs"].reshape(T * B, K).t() @ m.reshape(T * B, H).to(acc)).to(dt)
    dc0 = b["dc"].to(dt, copy=True) if spec.has_cell else None
    return dx, dh0.to(dt), dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr


def _projected_dh(b, t, T, B, n_host):
    """dL/dm_t for the projected LSTM: the projection breaks the per-tile fusion of dh, so the
    two small matmuls run here; rows whose sequence has ended pass dh on through ``carry``."""
    carry = b["carry"]
    dh = b["dy"][t].to(carry.dtype) + carry
    if t + 1 < T:
        dh += b["dgx"][t + 1].to(carry.dtype) @ b["w_acc"]
    carry.zero_()
    if n_host is not None and n_host[t] < B:
        carry[n_host[t]:] = dh[n_host[t]:]
        dh[n_host[t]:] = 0
    b["dhs"][t] = dh
    torch.mm(dh, b["w_hr_acc"], out=b["dm"][t])
