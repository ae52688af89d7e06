"""The oracle: readable plain-PyTorch math of every cell, of one recurrent layer and of
clip-by-global-norm.

Independent of the kernels and of the autograd Functions; differentiable by autograd (any order).
"""
import torch


def lstm_cell(x, h, c, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None):
    gates = x @ w_ih.t() + h @ w_hh.t()
    if b_ih is not None:
        gates = gates + b_ih + b_hh
    i, f, g, o = gates.chunk(4, dim=-1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c_new = f * c + i * g
    h_new = o * torch.tanh(c_new)
    if w_hr is not None:
        h_new = h_new @ w_hr.t()
    return h_new, c_new


def gru_cell(x, h, w_ih, w_hh, b_ih=None, b_hh=None):
    gx = x @ w_ih.t()
    gh = h @ w_hh.t()
    if b_ih is not None:
        gx = gx + b_ih
        gh = gh + b_hh
    xr, xz, xn = gx.chunk(3, dim=-1)
    hr, hz, hn = gh.chunk(3, dim=-1)
    r = torch.sigmoid(xr + hr)
    z = torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return (1 - z) * n + z * h


def rnn_cell(x, h, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity="tanh"):
    pre = x @ w_ih.t() + h @ w_hh.t()
    if b_ih is not None:
        pre = pre + b_ih + b_hh
    return torch.tanh(pre) if nonlinearity == "tanh" else torch.relu(pre)


# The reference step of each cell type (fastcells.cells.Cell.step): (x, h, c, weights) ->
# (h', c' or None), ``weights`` a LayerWeights (w_ih, w_hh, b_ih, b_hh, w_hr).
def lstm_step(x, h, c, weights):
    return lstm_cell(x, h, c, *weights)


def gru_step(x, h, c, weights):
    return gru_cell(x, h, *weights[:4]), None


def rnn_tanh_step(x, h, c, weights):
    return rnn_cell(x, h, *weights[:4], "tanh"), None


def rnn_relu_step(x, h, c, weights):
    return rnn_cell(x, h, *weights[:4], "relu"), None


def layer(cell, x, h0, c0, weights, batch_sizes=None):
    """One layer, one direction over x (T, B, I) from h0 (B, K) (and c0 (B, H) for the LSTM),
    with ``weights`` a :class:`fastcells.weights.LayerWeights` (w_ih, w_hh, b_ih, b_hh, w_hr).

    ``cell``: a :class:`fastcells.cells.Cell` or its name ('lstm', 'gru', 'rnn_tanh',
    'rnn_relu').  With ``batch_sizes`` (rows active at each step, decreasing), ended rows keep
    their state and get zero output.  Returns (y (T, B, K), h_n, c_n or None)."""
    if isinstance(cell, str):
        from .cells import get
        cell = get(cell)
    step = cell.step
    h, c = h0, c0
    ys = []
    for t in range(x.shape[0]):
        h_new, c_new = step(x[t], h, c, weights)
        if batch_sizes is not None:
            active = (torch.arange(x.shape[1], device=x.device) < int(batch_sizes[t]))[:, None]
            h_new = torch.where(active, h_new, h)
            if c is not None:
                c_new = torch.where(active, c_new, c)
        h, c = h_new, c_new
        ys.append(h)
    y = torch.stack(ys) if ys else x.new_zeros(0, x.shape[1], h0.shape[-1])
    return y, h, c


# ------------------------------------------------------------------- clip-by-global-norm
# The math of the clip custom ops (fastcells::clip_total_norm, fastcells::clip_scale_by_norm_),
# per tensor with torch ops: the ``reference`` backend of fastcells.clip.
def clip_tensor_norm(g, norm_type):
    """``torch.linalg.vector_norm(g, norm_type)``, except for an empty ``g``, where torch raises
    for inf, -inf and negative ``norm_type``: the identity of the reduction (0 for inf, inf for
    -inf and negative ``norm_type``), which leaves a total over other tensors unchanged."""
    if g.numel() == 0:
        out = torch.zeros((), dtype=g.abs().dtype, device=g.device)
        return out.fill_(float("inf")) if norm_type < 0 else out
    return torch.linalg.vector_norm(g, norm_type)


def clip_total_norm(tensors, norm_type):
    """The ``norm_type`` norm of the per-tensor norms of ``tensors`` (a non-empty list): a 0-d
    tensor of their promoted dtype on the first tensor's device."""
    first = tensors[0].device
    norms = [clip_tensor_norm(t, norm_type).to(first) for t in tensors]
    return torch.linalg.vector_norm(torch.stack(norms), norm_type)


def clip_scale_by_norm_(grads, max_norm, total_norm):
    """Scale every tensor of ``grads`` in place by ``clamp(max_norm / (total_norm + 1e-6),
    max=1)`` (``total_norm`` a 0-d tensor on any device)."""
    coef = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef.to(g.device))
