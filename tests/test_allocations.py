"""A call allocates what the math needs: the backward fills no zero gradient for an output
nobody used (the saved gates, the cell states, c_n, h_n), which autograd would otherwise
allocate at the layer's full size (T x B x 4H for the gates) and fill, every training call."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from rnn_utils import CELLS, KINDS, twins

T, B, I, H = 3, 2, 5, 7
_ZEROS = {torch.ops.aten.zeros.default, torch.ops.aten.zeros_like.default,
          torch.ops.aten.new_zeros.default, torch.ops.aten.zero_.default,
          # a view's backward that zero-fills a buffer of the whole base and copies into it
          torch.ops.aten.select_backward.default, torch.ops.aten.slice_backward.default}


class _ZeroFills(TorchDispatchMode):
    """Records every op that creates or fills a tensor with zeros, with its output shape."""

    def __init__(self):
        super().__init__()
        self.fills = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        fill_zero = func is torch.ops.aten.fill_.Scalar and args[1] == 0
        if func in _ZEROS or fill_zero:
            self.fills.append((str(func), tuple(out.shape)))
        return out


def _backward_fills(outputs):
    with _ZeroFills() as rec:
        sum(o.sum() for o in outputs).backward()
    return rec.fills


@pytest.mark.parametrize("mode,kw", [("lstm", {}), ("gru", {}),
                                     ("lstm", dict(num_layers=2, bidirectional=True))])
def test_layer_backward_fills_no_zero_gradients(mode, kw, device):
    """Also bidirectional: the reverse direction's input and output are flipped in time (a
    flip's backward is a flip; a gather's would fill a zero tensor to scatter into)."""
    _, fast = twins(KINDS, mode, I, H, backend="triton", device=device, **kw)
    x = torch.randn(T, B, I, dtype=torch.float64, device=device, requires_grad=True)
    y, _ = fast(x)   # the final states unused: no gradient flows into them
    assert _backward_fills([y]) == []


@pytest.mark.parametrize("kw", [{}, dict(bidirectional=True)])
def test_lstm_c_n_gradient_fills_nothing(kw, device):
    """c_n is the layer Function's own output: its gradient reaches the backward as is (a
    select of the cell states would fill a T x B x H zero tensor to carry it)."""
    _, fast = twins(KINDS, "lstm", I, H, backend="triton", device=device, **kw)
    x = torch.randn(T, B, I, dtype=torch.float64, device=device, requires_grad=True)
    y, (_, c_n) = fast(x)
    assert _backward_fills([y, c_n]) == []


@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_tanh"])
def test_cell_backward_fills_no_zero_gradients(mode, device):
    """Only h' is used (an LSTM's c' is not): a cell step's backward fills nothing, and its h'
    is a view whose backward is a view (a select's backward would zero a buffer)."""
    _, fast = twins(CELLS, mode, I, H, backend="triton", device=device)
    x = torch.randn(B, I, dtype=torch.float64, device=device, requires_grad=True)
    out = fast(x)
    h = out[0] if mode == "lstm" else out
    assert _backward_fills([h]) == []


def test_only_c_n_used_still_backpropagates(device):
    """With h' unused, its gradient is zero (built once, from the output's shape)."""
    ref, fast = twins(CELLS, "lstm", I, H, backend="triton", device=device)
    x = torch.randn(B, I, dtype=torch.float64, device=device)
    got, want = [], []
    for mod, out in ((fast, got), (ref, want)):
        xi = x.clone().requires_grad_()
        mod(xi)[1].sum().backward()
        out += [xi.grad, *[p.grad for p in mod.parameters()]]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_layer_only_c_n_used_still_backpropagates(device):
    ref, fast = twins(KINDS, "lstm", I, H, backend="triton", device=device)
    x = torch.randn(T, B, I, dtype=torch.float64, device=device)
    got, want = [], []
    for mod, out in ((fast, got), (ref, want)):
        xi = x.clone().requires_grad_()
        mod(xi)[1][1].sum().backward()
        out += [xi.grad, *[p.grad for p in mod.parameters()]]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)



_GEMMS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.addmm_.default,
          torch.ops.aten.bmm.default, torch.ops.aten.baddbmm.default}


class _Gemms(TorchDispatchMode):
    """Counts the matrix products run under it."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func in _GEMMS
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("table", ["layer", "cell"])
@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_a_state_without_gradient_costs_no_gemm(table, mode, device):
    """dL/dh0 takes a GEMM (dgates_0 W_hh): skipped when the initial state needs no gradient
    (a layer's default zeros, a rollout's first step), computed and right when it does."""
    ref, fast = twins(KINDS if table == "layer" else CELLS, mode, I, H, backend="triton",
                      device=device)
    x = torch.randn(*((T,) if table == "layer" else ()), B, I, dtype=torch.float64, device=device)
    lead = (1,) if table == "layer" else ()
    states = [torch.randn(*lead, B, H, dtype=torch.float64, device=device)
              for _ in range(2 if mode == "lstm" else 1)]
    def call(hx):
        out = fast(x, tuple(hx) if mode == "lstm" else hx[0])
        (out[0] if isinstance(out, tuple) else out).sum().backward()

    call([s.clone() for s in states])   # on CUDA: the graphs captured before counting
    counts = {}
    for needs in (False, True):
        hx = [s.clone().requires_grad_(needs) for s in states]
        with _Gemms() as rec:
            call(hx)
        counts[needs] = rec.count
        if needs:
            hx_ref = [s.clone().requires_grad_() for s in states]
            out_ref = ref(x, tuple(hx_ref) if mode == "lstm" else hx_ref[0])
            (out_ref[0] if isinstance(out_ref, tuple) else out_ref).sum().backward()
            for a, b in zip(hx, hx_ref):
                torch.testing.assert_close(a.grad, b.grad)
        else:
            assert all(s.grad is None for s in hx)
    assert counts[True] == counts[False] + 1


@pytest.mark.parametrize("table", ["layer", "cell"])
@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_a_frozen_layer_costs_no_weight_gemm(table, mode, device):
    """Weights that need no gradient (a frozen encoder; the input gradient alone, as for
    saliency) cost no weight-gradient GEMM: two for a layer's W_hh over T > 1 steps, one for a
    cell's, one for W_ih. The input gradient is still right."""
    ref, fast = twins(KINDS if table == "layer" else CELLS, mode, I, H, backend="triton",
                      device=device)
    x = torch.randn(*((T,) if table == "layer" else ()), B, I, dtype=torch.float64, device=device)

    def call(m):
        xi = x.clone().requires_grad_()
        with _Gemms() as rec:
            out = m(xi)
            (out[0] if isinstance(out, tuple) else out).sum().backward()
        return xi.grad, rec.count

    call(fast)   # on CUDA: the graphs captured before counting
    _, trained = call(fast)
    for m in (ref, fast):
        m.requires_grad_(False)
    got, frozen = call(fast)
    want, _ = call(ref)
    torch.testing.assert_close(got, want)
    assert frozen == trained - (3 if table == "layer" else 2)
