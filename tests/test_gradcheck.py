"""torch.autograd.gradcheck in float64 on the fused (triton) path, for every cell kind.

fast_mode (random projections of the Jacobian) keeps the interpreter's cost down; the full
Jacobians are compared against torch in test_rnn_parity."""
import pytest
import torch

from fastcells import functional

T, B, I, H = 3, 2, 3, 5
MODES = ["lstm", "gru", "rnn_tanh", "rnn_relu"]


def _weights(mode, layers, dirs, proj, bias, device):
    gates = {"lstm": 4, "gru": 3}.get(mode, 1)
    K = proj or H
    ws = []
    g = torch.Generator().manual_seed(5)
    for layer in range(layers):
        for _ in range(dirs):
            in_size = I if layer == 0 else K * dirs
            shapes = [(gates * H, in_size), (gates * H, K)]
            if bias:
                shapes += [(gates * H,), (gates * H,)]
            if proj:
                shapes.append((proj, H))
            ws += [(0.5 * torch.randn(*s, generator=g, dtype=torch.float64)).to(device)
                   .requires_grad_() for s in shapes]
    return ws


CONFIGS = {
    "plain": dict(),
    "nobias": dict(bias=False),
    "bidir-packed": dict(dirs=2, packed=True),
    "2layers": dict(layers=2),
    "proj-packed": dict(proj=2, packed=True),
}


@pytest.mark.parametrize("mode,config", [
    pytest.param(m, c, id=f"{m}-{c}") for m in MODES for c in CONFIGS
    if not (c.startswith("proj") and m != "lstm")])  # proj_size exists for the LSTM only
def test_gradcheck_triton(mode, config, device):
    cfg = dict(dict(layers=1, dirs=1, proj=0, bias=True, packed=False), **CONFIGS[config])
    layers, dirs, proj = cfg["layers"], cfg["dirs"], cfg["proj"]
    ws = _weights(mode, layers, dirs, proj, cfg["bias"], device)
    K = proj or H
    g = torch.Generator().manual_seed(6)
    batch_sizes = torch.tensor([2, 2, 1]) if cfg["packed"] else None
    n = int(batch_sizes.sum()) if cfg["packed"] else None
    x = torch.randn(*((n, I) if cfg["packed"] else (T, B, I)), generator=g,
                    dtype=torch.float64).to(device).requires_grad_()
    h0 = torch.randn(layers * dirs, B, K, generator=g, dtype=torch.float64).to(device).requires_grad_()
    c0 = torch.randn(layers * dirs, B, H, generator=g, dtype=torch.float64).to(device).requires_grad_()
    lstm = mode == "lstm"

    def fn(x, h0, c0, *ws):
        out, hid = functional.rnn(mode, x, (h0, c0) if lstm else h0, ws, num_layers=layers,
                                  bias=cfg["bias"], bidirectional=dirs == 2,
                                  batch_sizes=batch_sizes, proj_size=proj, backend="triton")
        return (out,) + (tuple(hid) if lstm else (hid,))

    inputs = (x, h0, c0 if lstm else c0.detach(), *ws)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_cell_triton(mode, device):
    ws = _weights(mode, 1, 1, 0, True, device)
    g = torch.Generator().manual_seed(8)
    x = torch.randn(B, I, generator=g, dtype=torch.float64).to(device).requires_grad_()
    h = torch.randn(B, H, generator=g, dtype=torch.float64).to(device).requires_grad_()
    c = torch.randn(B, H, generator=g, dtype=torch.float64).to(device).requires_grad_()
    fn = {"lstm": lambda x, h, c, *w: functional.lstm_cell(x, (h, c), *w, backend="triton"),
          "gru": lambda x, h, c, *w: functional.gru_cell(x, h, *w, backend="triton"),
          "rnn_tanh": lambda x, h, c, *w: functional.rnn_tanh_cell(x, h, *w, backend="triton"),
          "rnn_relu": lambda x, h, c, *w: functional.rnn_relu_cell(x, h, *w, backend="triton")}[mode]
    assert torch.autograd.gradcheck(fn, (x, h, c if mode == "lstm" else c.detach(), *ws),
                                    eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)
