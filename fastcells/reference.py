"""The oracle: readable plain-PyTorch math of every cell and of one recurrent layer.

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


def layer(mode, x, h0, c0, weights, batch_sizes=None):
    """One layer, one direction over x (T, B, I) from h0 (B, K) (and c0 (B, H) for the LSTM),
    with ``weights`` a :class:`fastcells.weights.LayerWeights` (w_ih, w_hh, b_ih, b_hh, w_hr).

    ``mode`` is 'lstm', 'gru', 'rnn_tanh' or 'rnn_relu'.  With ``batch_sizes`` (rows active at
    each step, decreasing), ended rows keep their state and get zero output.
    Returns (y (T, B, K), h_n, c_n or None)."""
    w_ih, w_hh, b_ih, b_hh, w_hr = weights
    h, c = h0, c0
    ys = []
    for t in range(x.shape[0]):
        if mode == "lstm":
            h_new, c_new = lstm_cell(x[t], h, c, w_ih, w_hh, b_ih, b_hh, w_hr)
        elif mode == "gru":
            h_new, c_new = gru_cell(x[t], h, w_ih, w_hh, b_ih, b_hh), None
        else:
            h_new, c_new = rnn_cell(x[t], h, w_ih, w_hh, b_ih, b_hh, mode[4:]), None
        if batch_sizes is not None:
            active = (torch.arange(x.shape[1], device=x.device) < int(batch_sizes[t]))[:, None]
            h_new = torch.where(active, h_new, h)
            if c is not None:
                c_new = torch.where(active, c_new, c)
        h, c = h_new, c_new
        ys.append(h)
    y = torch.stack(ys) if ys else x.new_zeros(0, x.shape[1], h0.shape[-1])
    return y, h, c
