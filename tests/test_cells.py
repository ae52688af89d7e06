"""fastcells cells against torch.nn cells: float64 parity, unbatched, default hx, errors."""
import pytest
import torch

from rnn_utils import CELLS, assert_same_errors, grads, loss_of, twins
from tolerances import assert_close

B, I, H = 3, 5, 7


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("inp", ["batched", "unbatched", "no-hx", "noncontig"])
@pytest.mark.parametrize("kind", list(CELLS))
def test_cell_matches_torch(kind, inp, bias, backend, device):
    ref, fast = twins(CELLS, kind, I, H, backend=backend, device=device, bias=bias)
    g = torch.Generator().manual_seed(2)
    rand = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(device)  # noqa: E731
    shape = (I,) if inp == "unbatched" else (B, I)
    hshape = (H,) if inp == "unbatched" else (B, H)
    if inp == "noncontig":
        base = rand(I, 2 * B).requires_grad_()
        x = base.t()[::2]
        leaves = [base]
    else:
        x = rand(*shape).requires_grad_()
        leaves = [x]
    hx = None
    if inp != "no-hx":
        h, c = rand(*hshape).requires_grad_(), rand(*hshape).requires_grad_()
        hx = (h, c) if kind == "lstm" else h
        leaves += [h, c] if kind == "lstm" else [h]
    out_ref, out_fast = ref(x, hx), fast(x, hx)
    fr = list(out_ref) if kind == "lstm" else [out_ref]
    ff = list(out_fast) if kind == "lstm" else [out_fast]
    for a, b in zip(ff, fr):
        assert a.shape == b.shape
        assert_close(a, b, torch.float64)
    g_ref = grads(loss_of(fr), leaves + list(ref.parameters()))
    g_fast = grads(loss_of(ff), leaves + list(fast.parameters()))
    for a, b in zip(g_fast, g_ref):
        assert_close(a, b, torch.float64)


def _bad_cell_inputs(kind):
    two = kind == "lstm"
    hx = lambda b, h: (torch.randn(b, h), torch.randn(b, h)) if two else torch.randn(b, h)  # noqa: E731
    cases = {
        "input-size": (torch.randn(B, I + 1), hx(B, H)),
        "hidden-size": (torch.randn(B, I), hx(B, H + 1)),
        "hidden-batch": (torch.randn(B, I), hx(B + 1, H)),
        "input-3d": (torch.randn(2, B, I), None),
        "hidden-3d": (torch.randn(B, I), (torch.randn(1, B, H), torch.randn(1, B, H)) if two
                      else torch.randn(1, B, H)),
        "dtype": (torch.randn(B, I, dtype=torch.float64), None),
    }
    if two:
        cases["cell-size"] = (torch.randn(B, I), (torch.randn(B, H), torch.randn(B, H + 2)))
        cases["cell-batch"] = (torch.randn(B, I), (torch.randn(B, H), torch.randn(B + 1, H)))
    return cases


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("kind", list(CELLS))
def test_cell_errors_match_torch(kind, backend, device):
    torch_cls, fast_cls, extra = CELLS[kind]
    ref = torch_cls(I, H, **extra).to(device)
    fast = fast_cls(I, H, **extra, backend=backend).to(device)
    assert_same_errors(ref, fast, _bad_cell_inputs(kind), device)


# ------------------------------------------------------- the plain eager step (rnn_ops.RNNStep)
@pytest.mark.parametrize("kind", list(CELLS))
def test_cell_step_is_one_node_over_its_inputs(kind, device):
    """A plain cell call records one autograd node whose inputs are the leaves themselves: no
    view or index node around it (host time per step)."""
    _, fast = twins(CELLS, kind, I, H, backend="triton", device=device)
    x = torch.randn(B, I, dtype=torch.float64, device=device, requires_grad=True)
    h = torch.randn(B, H, dtype=torch.float64, device=device, requires_grad=True)
    out = fast(x, (h, h.detach()) if kind == "lstm" else h)
    for o in (out if kind == "lstm" else (out,)):
        assert type(o.grad_fn).__name__ == "RNNStepBackward"
        leaves = [f.variable for f, _ in o.grad_fn.next_functions if f is not None]
        assert leaves[0] is x and leaves[1] is h
        assert all(isinstance(v, torch.Tensor) and v.is_leaf for v in leaves)


@pytest.mark.parametrize("used", ["h", "c", "both"])
def test_lstm_cell_gradient_from_either_state(used, device):
    """Backpropagating from h' alone, c' alone or both matches torch (the step's backward gets
    None for the output nobody used)."""
    ref, fast = twins(CELLS, "lstm", I, H, backend="triton", device=device)
    g = torch.Generator().manual_seed(4)
    x, h, c = (torch.randn(B, n, generator=g, dtype=torch.float64).to(device).requires_grad_()
               for n in (I, H, H))
    got = []
    for m in (fast, ref):
        hn, cn = m(x, (h, c))
        outs = {"h": [hn], "c": [cn], "both": [hn, cn]}[used]
        got.append(grads(loss_of(outs), [x, h, c] + list(m.parameters())))
    for a, b in zip(*got):
        assert_close(a, b, torch.float64)


@pytest.mark.parametrize("kind", list(CELLS))
def test_cell_gradient_penalty_matches_torch(kind, device):
    """create_graph=True through a cell (a gradient penalty): the step's backward is itself
    differentiable and matches torch's."""
    ref, fast = twins(CELLS, kind, I, H, backend="triton", device=device)
    x = torch.randn(B, I, dtype=torch.float64, device=device)
    results = []
    for m in (ref, fast):
        xi = x.clone().requires_grad_()
        out = m(xi)
        (gx,) = torch.autograd.grad(loss_of(list(out) if kind == "lstm" else [out]), xi,
                                    create_graph=True)
        results.append(torch.autograd.grad((gx ** 2).sum(), list(m.parameters())))
    for a, b in zip(results[1], results[0]):
        assert_close(a, b, torch.float64)


@pytest.mark.parametrize("create_graph", [False, True])
def test_lstm_cell_one_tensor_as_both_states(create_graph, device):
    """One tensor passed as both h and c: each slot gets its own gradient and autograd sums
    them, in a plain backward and a differentiable one (the reference math's slots are
    separate nodes)."""
    ref, fast = twins(CELLS, "lstm", I, H, backend="triton", device=device)
    x = torch.randn(B, I, dtype=torch.float64, device=device)
    s = torch.randn(B, H, dtype=torch.float64, device=device)
    results = []
    for m in (ref, fast):
        si = s.clone().requires_grad_()
        h, c = m(x, (si, si))
        (g,) = torch.autograd.grad(loss_of([h, c]), si, create_graph=create_graph)
        results.append([g, *(torch.autograd.grad(g.square().sum(), list(m.parameters()))
                             if create_graph else [])])
    for a, b in zip(results[1], results[0]):
        assert_close(a, b, torch.float64)
