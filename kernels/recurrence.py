"""Launchers: one recurrent layer, one direction, whole sequence.

The input projection and every weight gradient are hoisted out of the time loop as single GEMMs
over all T*B rows; the time loop launches one fused step kernel per step.  Buffers are
time-major and contiguous.  Packed (variable-length) batches are sorted by decreasing length, so
the rows active at step t are a prefix 0..batch_sizes[t]-1; ended rows carry their state.
"""
from dataclasses import dataclass, field

import torch
import triton

from .common import acc_dtype, block_sizes, check_dtype, dot_flags, tl_dtype
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
    block_b, block_h = block_sizes(B, H)
    upcast, precision = dot_flags(dtype)
    grid = (triton.cdiv(B, block_b), triton.cdiv(H, block_h))
    meta = dict(ACC=tl_dtype(acc_dtype(dtype)), UPCAST=upcast, PRECISION=precision,
                BLOCK_B=block_b, BLOCK_H=block_h, BLOCK_K=32 if K >= 32 else 16)
    return grid, meta


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
    xp = torch.matmul(x, w_ih.t()).contiguous()            # hoisted input projection
    hs = torch.empty(T + 1, B, K, device=dev, dtype=dt)
    hs[0] = h0
    cs = None
    if spec.has_cell:
        cs = torch.empty(T + 1, B, H, device=dev, dtype=acc_dtype(dt))
        cs[0] = c0
    proj = w_hr is not None
    m = torch.empty(T, B, H, device=dev, dtype=dt) if proj else None
    out = m if proj else hs[1:]
    saved = torch.empty(T, B, spec.saved * H, device=dev, dtype=dt) if spec.saved else hs
    n_dev, n_host = _active_rows(batch_sizes, dev)
    if B > 0 and H > 0:
        grid, meta = _launch_config(B, H, K, dt)
        w = w_hh.contiguous()
        has_bias = b_ih is not None
        b1 = b_ih.contiguous() if has_bias else w
        b2 = b_hh.contiguous() if has_bias else w
        w_hr_t = w_hr.t() if proj else None
        for t in range(T):
            spec.fwd[grid](
                xp_ptr=xp, w_ptr=w, b_ih_ptr=b1, b_hh_ptr=b2, hs_ptr=hs,
                cs_ptr=cs if cs is not None else hs, out_ptr=out, saved_ptr=saved,
                n_ptr=n_dev if n_dev is not None else xp, t=t, B=B, H=H, K=K,
                HAS_BIAS=has_bias, HAS_LENGTHS=n_dev is not None, PROJ=proj,
                **meta, **spec.extra,
            )
            if proj:
                torch.mm(m[t], w_hr_t, out=hs[t + 1])
                if n_host is not None and n_host[t] < B:
                    hs[t + 1, n_host[t]:] = hs[t, n_host[t]:]
    elif B > 0:
        hs[1:] = hs[:1]                                     # H == 0: nothing evolves
    return hs, cs, (saved if spec.saved else None), m


def layer_backward(mode, x, w_ih, w_hh, has_bias, hs, cs, saved, m, batch_sizes, dy, dhn,
                   dcn=None, w_hr=None, need_input_grad=True):
    """Gradients of one layer from what ``layer_forward`` returned (hs, cs, saved, m):
    returns dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr (None where absent).

    dy (T, B, K), dhn (B, K), dcn (B, H) may be None (zero)."""
    spec = CELLS[mode]
    saved = hs if saved is None else saved
    n_dev, n_host = _active_rows(batch_sizes, x.device)
    T, B, K = hs.shape[0] - 1, hs.shape[1], hs.shape[2]
    GH = w_hh.shape[0]
    H = GH // spec.gates
    dev, dt = x.device, x.dtype
    acc = acc_dtype(dt)
    proj = w_hr is not None
    dy = torch.zeros(T, B, K, device=dev, dtype=dt) if dy is None else dy.contiguous()
    carry = torch.zeros(B, K, device=dev, dtype=acc) if dhn is None else dhn.to(acc).clone()
    dc = None
    if spec.has_cell:
        dc = torch.zeros(B, H, device=dev, dtype=acc) if dcn is None else dcn.to(acc).clone()
    dgx = torch.empty(T, B, GH, device=dev, dtype=dt)
    dgh = torch.empty(T, B, GH, device=dev, dtype=dt) if spec.split_dgates else dgx
    dhs = torch.empty(T, B, K, device=dev, dtype=acc) if proj else None
    if B > 0 and H > 0:
        grid, meta = _launch_config(B, H, max(K, GH), dt)
        w = w_hh.contiguous()
        w_acc = w_hh.to(acc) if proj else None
        w_hr_acc = w_hr.to(acc) if proj else None
        dm = torch.empty(T, B, H, device=dev, dtype=acc) if proj else None
        for t in range(T - 1, -1, -1):
            if proj:
                # The projection breaks the per-tile fusion of dh: do the two small matmuls here.
                dh = dy[t].to(acc) + carry
                if t + 1 < T:
                    dh += dgx[t + 1].to(acc) @ w_acc
                if n_host is not None and n_host[t] < B:
                    carry = torch.zeros_like(carry)
                    carry[n_host[t]:] = dh[n_host[t]:]
                    dh[n_host[t]:] = 0
                else:
                    carry.zero_()
                dhs[t] = dh
                torch.mm(dh, w_hr_acc, out=dm[t])
            spec.bwd[grid](
                dy_ptr=dm if proj else dy, w_ptr=w, saved_ptr=saved, hs_ptr=hs,
                cs_ptr=cs if cs is not None else hs, dgx_ptr=dgx, dgh_ptr=dgh,
                carry_ptr=carry, dc_ptr=dc if dc is not None else carry,
                n_ptr=n_dev if n_dev is not None else dgx, t=t, T=T, B=B, H=H, K=K,
                HAS_LENGTHS=n_dev is not None, PRE=proj, **meta, **spec.extra,
            )
    else:
        dgx.zero_()
        dgh.zero_()
        if proj:
            dhs.zero_()
    # Hoisted GEMMs over all T*B rows.
    dgx2 = dgx.reshape(T * B, GH)
    dgh2 = dgh.reshape(T * B, GH)
    dh0 = carry
    if T > 0:
        dh0 = carry + dgh[0].to(acc) @ w_hh.to(acc)
    dw_hh = dgh2.t() @ hs[:T].reshape(T * B, K)
    dw_ih = dgx2.t() @ x.reshape(T * B, -1)
    dx = torch.matmul(dgx, w_ih) if need_input_grad else None
    db_ih = dgx2.sum(0) if has_bias else None
    db_hh = dgh2.sum(0) if has_bias else None
    dw_hr = None
    if proj:
        dw_hr = (dhs.reshape(T * B, K).t() @ m.reshape(T * B, H).to(acc)).to(dt)
    dc0 = dc.to(dt) if dc is not None else None
    return dx, dh0.to(dt), dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr
