"""A layer whose gate tensor has more than 2^31 elements (GPU only): every offset in the kernels
must be 64-bit.  The kernels' output for two batch rows (the first and the last, whose offsets
at the late steps pass 2^31) is checked against the reference on those rows alone: rows of a
layer are independent, so the slice is exact."""
import pytest
import torch

from fastcells import reference
from fastcells.kernels import cuda_graph
from fastcells.rnn_ops import recurrent_layer
from fastcells.weights import LayerWeights

T, B, H = 4104, 128, 1024     # T * B * 4H = 2^31 + 2^22 gate elements
NEEDS_BYTES = 60 * 2**30      # forward and backward buffers, and the CUDA graphs' copies of them


def _free_bytes():
    return torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a GPU test (2^31 elements)")
def test_lstm_gates_past_2_31_elements():
    if _free_bytes() < NEEDS_BYTES:   # at run time: other test workers share the card
        pytest.skip("needs about 60 GiB of free GPU memory")
    assert T * B * 4 * H > 2**31
    try:
        _check_past_2_31()
    finally:   # the graphs' static buffers and torch's cache: give the card back to the others
        cuda_graph.clear()
        torch.cuda.empty_cache()


def _check_past_2_31():
    g = torch.Generator(device="cuda").manual_seed(0)
    dt = torch.bfloat16

    def rnd(*shape, scale):
        return (torch.randn(*shape, generator=g, device="cuda") * scale).to(dt)

    w = LayerWeights(rnd(4 * H, H, scale=H ** -0.5), rnd(4 * H, H, scale=H ** -0.5),
                     rnd(4 * H, scale=0.1), rnd(4 * H, scale=0.1))
    x = rnd(T, B, H, scale=1.0).requires_grad_()
    h0, c0 = rnd(B, H, scale=0.5), rnd(B, H, scale=0.5)
    y, hn, cn = recurrent_layer("lstm", x, h0, c0, w)
    dy = rnd(T, B, H, scale=0.1)
    (dx,) = torch.autograd.grad(y, x, dy)

    rows = torch.tensor([0, B - 1], device="cuda")
    xs = x.detach()[:, rows].float().requires_grad_()
    up = LayerWeights(*(None if t is None else t.float() for t in w))
    y_ref, hn_ref, cn_ref = reference.layer("lstm", xs, h0[rows].float(), c0[rows].float(), up)
    (dx_ref,) = torch.autograd.grad(y_ref, xs, dy[:, rows].float())

    # bf16 storage of h at every step against fp32 throughout: a few bf16 ulps, while a wrong
    # (wrapped 32-bit) offset reads or writes another row or step and is off by O(1)
    torch.testing.assert_close(y.detach()[:, rows].float(), y_ref, atol=3e-2, rtol=0)
    torch.testing.assert_close(hn.detach()[rows].float(), hn_ref, atol=3e-2, rtol=0)
    torch.testing.assert_close(cn.detach()[rows].float(), cn_ref, atol=6e-2, rtol=0)
    torch.testing.assert_close(dx[:, rows].float(), dx_ref,
                               atol=0.05 * float(dx_ref.abs().max()), rtol=0)
    assert float(dx_ref[-8:].abs().max()) > 0   # the steps past 2^31 carry gradient
