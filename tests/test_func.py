"""torch.func through the kernels: grad, vmap of grad (per-sample gradients), jacrev and
torch.autograd.functional.jacobian(vectorize=True), on every module and cell, the triton backend
(interpreter on CPU) against the reference backend, in float64.

torch's own RNN modules have no vmap support (PyTorch issue 105982); fastcells' layers fold a
vmapped dimension into the batch, so these run as batched launches."""
import pytest
import torch
from torch.func import functional_call, grad, jacrev, vmap

from rnn_utils import CELLS, KINDS, count_launches, twins

T, B, I, H = 3, 2, 3, 5
TOL = dict(atol=1e-9, rtol=1e-9)
KIND_IDS = list(KINDS)


def _pair(table, kind, *args, device, **kw):
    _, fast = twins(table, kind, *args, backend="triton", device=device, **kw)
    ref = table[kind][1](*args, **table[kind][2], **kw, backend="reference").to(
        device=device, dtype=torch.float64)
    ref.load_state_dict(fast.state_dict())
    return fast, ref


def _out(o):
    """The first output of a module call (the layer output, or h' of a cell)."""
    return o[0] if isinstance(o, tuple) else o


def _loss_fn(module):
    def loss(params, x):
        out = functional_call(module, params, (x,))
        y = _out(out)
        w = torch.linspace(-1, 1, y.numel(), dtype=y.dtype, device=y.device).view(y.shape)
        return (y * w).sum() + (y * y).sum()
    return loss


def _modules(device):
    for kind in KIND_IDS:
        yield f"layer-{kind}", _pair(KINDS, kind, I, H, device=device), torch.randn(
            T, B, I, dtype=torch.float64, device=device), 1
        yield f"cell-{kind}", _pair(CELLS, kind, I, H, device=device), torch.randn(
            B, I, dtype=torch.float64, device=device), 0


CASES = [f"layer-{k}" for k in KIND_IDS] + [f"cell-{k}" for k in KIND_IDS]


def _case(name, device):
    torch.manual_seed(3)
    return {n: (m, x, bd) for n, m, x, bd in _modules(device)}[name]


def _params(m):
    return {k: v.detach() for k, v in m.named_parameters()}


def _assert_same(a, b):
    for k in a:
        torch.testing.assert_close(a[k], b[k], **TOL, msg=k)


@pytest.mark.parametrize("case", CASES)
def test_func_grad(case, device):
    (fast, ref), x, _ = _case(case, device)
    _assert_same(grad(_loss_fn(fast))(_params(fast), x), grad(_loss_fn(ref))(_params(ref), x))


@pytest.mark.parametrize("case", CASES)
def test_vmap_grad_per_sample(case, device):
    (fast, ref), x, batch_dim = _case(case, device)
    per_sample = lambda m: vmap(grad(_loss_fn(m)), in_dims=(None, batch_dim))  # noqa: E731
    got = per_sample(fast)(_params(fast), x)
    want = per_sample(ref)(_params(ref), x)
    _assert_same(got, want)
    # and they are per-sample: each equals the gradient of that sample alone
    one = grad(_loss_fn(ref))(_params(ref), x.select(batch_dim, 1))
    _assert_same({k: v[1] for k, v in got.items()}, one)


@pytest.mark.parametrize("case", CASES)
def test_jacrev(case, device):
    (fast, ref), x, _ = _case(case, device)
    f = lambda m: (lambda x: _out(m(x)))  # noqa: E731
    torch.testing.assert_close(jacrev(f(fast))(x), jacrev(f(ref))(x), **TOL)


@pytest.mark.parametrize("case", CASES)
def test_jacobian_vectorized(case, device):
    (fast, ref), x, _ = _case(case, device)
    w = fast.weight_hh_l0 if hasattr(fast, "weight_hh_l0") else fast.weight_hh
    w_ref = ref.weight_hh_l0 if hasattr(ref, "weight_hh_l0") else ref.weight_hh
    name = "weight_hh_l0" if hasattr(fast, "weight_hh_l0") else "weight_hh"

    def f(m):
        params = _params(m)
        return lambda x, w: _out(functional_call(m, {**params, name: w}, (x,)))
    got = torch.autograd.functional.jacobian(f(fast), (x, w.detach()), vectorize=True)
    want = torch.autograd.functional.jacobian(f(ref), (x, w_ref.detach()), vectorize=True)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL)


def test_vmap_ensemble_batched_weights(device):
    """Model ensembling: vmap over stacked parameters (the members stacked in one layer call)."""
    (fast, ref), x, _ = _case("layer-lstm", device)
    params = {k: torch.stack([v, v * 0.5]) for k, v in _params(fast).items()}
    run = lambda m: vmap(lambda p: _out(functional_call(m, p, (x,))))(params)  # noqa: E731
    torch.testing.assert_close(run(fast), run(ref), **TOL)


def _ensemble(m, k=2):
    return {n: torch.stack([v * (1 - 0.3 * j) for j in range(k)]) for n, v in _params(m).items()}


@pytest.mark.parametrize("case", ["layer-lstm", "layer-gru", "cell-lstm", "cell-rnn_relu"])
@pytest.mark.parametrize("x_batched", [False, True])
def test_vmap_ensemble_training(case, x_batched, device):
    """Ensemble training (vmap of grad over stacked parameters, each member on its own data or
    on shared data): the members run as stacked members of one layer call."""
    (fast, ref), x, _ = _case(case, device)
    xs = torch.stack([x, 0.5 * x]) if x_batched else x
    dims = (0, 0 if x_batched else None)
    got = vmap(grad(_loss_fn(fast)), in_dims=dims)(_ensemble(fast), xs)
    want = vmap(grad(_loss_fn(ref)), in_dims=dims)(_ensemble(ref), xs)
    _assert_same(got, want)


def test_vmap_ensemble_hessian(device):
    """A second order through stacked members (the backward's own backward, member by member
    on the reference math): hessians of each member's output with respect to its input."""
    (fast, ref), x, _ = _case("cell-gru", device)

    def per_member(m):
        def f(p, x):
            return jacrev(grad(lambda x: _loss_fn(m)(p, x)))(x)
        return vmap(f, in_dims=(0, None))(_ensemble(m), x)
    torch.testing.assert_close(per_member(fast), per_member(ref), **TOL)


def test_vmap_ensemble_is_one_launch_per_step(device, monkeypatch):
    """The members of an ensemble share each step's launch (the member grid axis), forward and,
    in ensemble training (vmap of grad), backward."""
    monkeypatch.setenv("FASTCELLS_CUDA_GRAPHS", "0")  # count Python launches, not a capture's
    calls = count_launches(monkeypatch, "gru")
    (fast, ref), x, _ = _case("layer-gru", device)
    run = lambda m: vmap(lambda p: _out(functional_call(m, p, (x,))))(_ensemble(m, 3))  # noqa: E731
    with torch.no_grad():
        got = run(fast)
    assert len(calls["fwd"]) == T and all(g[2] == 3 for g in calls["fwd"])
    torch.testing.assert_close(got, run(ref), **TOL)
    calls["fwd"].clear()
    vmap(grad(_loss_fn(fast)), in_dims=(0, None))(_ensemble(fast, 3), x)
    for grids in calls.values():
        assert len(grids) == T and all(g[2] == 3 for g in grids)


def test_vmap_packed_layer(device):
    """A vmapped packed batch folds into one launch with scaled batch sizes."""
    (fast, ref), _, _ = _case("layer-gru", device)
    xs = torch.randn(2, 3, I, dtype=torch.float64, device=device)  # 2 members, 3 packed rows

    def run(m):
        def f(data):
            packed = torch.nn.utils.rnn.PackedSequence(data, torch.tensor([2, 1]))
            out, h = m(packed)
            return out.data, h
        return vmap(f)(xs)
    for a, b in zip(run(fast), run(ref)):
        torch.testing.assert_close(a, b, **TOL)


def test_vmapped_layer_is_one_batched_launch_per_step(device, monkeypatch):
    """vmap folds the vmapped dimension into the batch: T step launches, not T per member."""
    monkeypatch.setenv("FASTCELLS_CUDA_GRAPHS", "0")  # count Python launches, not a capture's
    calls = count_launches(monkeypatch, "lstm")["fwd"]
    (fast, _), x, _ = _case("layer-lstm", device)
    xs = torch.randn(7, T, B, I, dtype=torch.float64, device=device)
    with torch.no_grad():
        vmap(lambda x: fast(x)[0])(xs)
    assert len(calls) == T


@pytest.mark.parametrize("case", ["cell-lstm", "layer-gru"])
def test_hessian_through_func(case, device):
    """jacrev(grad(f)): the kernels' backward differentiated once more under torch.func."""
    (fast, ref), x, _ = _case(case, device)
    name = "weight_hh_l0" if case.startswith("layer") else "weight_hh"

    def hess(m):
        params = _params(m)

        def f(w):
            return _loss_fn(m)({**params, name: w}, x)
        return jacrev(grad(f))(params[name])
    torch.testing.assert_close(hess(fast), hess(ref), **TOL)


@pytest.mark.parametrize("grad_mode", ["train", "no_grad"])
@pytest.mark.parametrize("case", ["layer-lstm", "cell-lstm", "cell-gru"])
def test_tensors_escaped_from_a_transform(case, grad_mode, device):
    """Tensors kept from inside a transform (dead torch.func wrappers) are unwrapped before the
    kernels read them, as torch's Function.apply and native modules do."""
    (fast, ref), x, _ = _case(case, device)
    hshape = (1, B, H) if case.startswith("layer") else (B, H)
    kept = []

    def f(x):
        kept.append(x * 2)
        kept.append((x.sum() * 0 + 0.5).expand(hshape).contiguous())
        return x.sum()
    grad(f)(x)
    x_kept, h_kept = kept
    assert all(torch._C._functorch.is_functorch_wrapped_tensor(t) for t in kept)
    h = torch.full(hshape, 0.5, dtype=x.dtype, device=device)
    with torch.set_grad_enabled(grad_mode == "train"):
        got = fast(x_kept, (h_kept, h_kept) if "lstm" in case else h_kept)
        want = ref(2 * x, (h, h) if "lstm" in case else h)
    for a, b in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want)):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("grad_mode", ["train", "no_grad"])
@pytest.mark.parametrize("case", ["layer-lstm", "layer-gru", "cell-lstm", "cell-gru"])
def test_vjp_pullback_after_its_transform(case, grad_mode, device):
    """torch.func.vjp's pullback runs after its transform has ended, on the wrappers the
    forward saved (dead by then): under plain autograd its result is differentiable with
    respect to the tensors under them (a gradient penalty through vjp); under no_grad it is
    the plain gradient."""
    (fast, ref), x, _ = _case(case, device)
    hshape = (1, B, H) if case.startswith("layer") else (B, H)
    torch.manual_seed(4)
    h0 = torch.randn(hshape, dtype=x.dtype, device=device)
    results = []
    for m in (fast, ref):
        h = h0.clone().requires_grad_()
        out, pullback = torch.func.vjp(lambda h: _out(m(x, (h, h) if "lstm" in case else h)), h)
        with torch.set_grad_enabled(grad_mode == "train"):
            (dh,) = pullback(torch.ones_like(out))
        got = [dh]
        if grad_mode == "train":
            assert dh.grad_fn is not None
            got += torch.autograd.grad(dh.square().sum(), [h, *m.parameters()])
        results.append(got)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("ensemble", [False, True])
@pytest.mark.parametrize("case", ["layer-lstm", "layer-gru", "cell-lstm"])
def test_jacrev_of_a_scalar_over_parameters(case, ensemble, device):
    """jacrev of a scalar loss with respect to the parameters, alone and over an ensemble
    (vmap of jacrev): the backward is vmapped over a single cotangent, one problem in all,
    and its weight gradients come back with that dimension."""
    (fast, ref), x, _ = _case(case, device)

    def run(m):
        f = jacrev(_loss_fn(m))
        if ensemble:
            return vmap(f, in_dims=(0, None))(_ensemble(m), x)
        return f(_params(m), x)
    _assert_same(run(fast), run(ref))


def _flat_out(m, hx):
    def f(x):
        return torch.cat([t.flatten() for t in torch.utils._pytree.tree_leaves(m(x, hx))])
    return f


@pytest.mark.parametrize("case", CASES)
def test_forward_mode(case, device):
    """Forward mode through the kernels' Functions (their jvp rules: the reference math's, as
    the vjp of its pullback): torch.func.jvp, jacfwd over the input and over the parameters,
    torch.autograd.forward_ad's dual tensors, and a hessian as jacfwd of jacrev."""
    import torch.autograd.forward_ad as fwAD
    (fast, ref), x, _ = _case(case, device)
    torch.manual_seed(5)
    tx = torch.randn_like(x)
    h = torch.randn((1, B, H) if case.startswith("layer") else (B, H), dtype=x.dtype,
                    device=device)
    hx = (h, 0.5 * h) if "lstm" in case else h
    results = []
    for m in (fast, ref):
        f = _flat_out(m, hx)
        got = list(torch.func.jvp(f, (x,), (tx,)))
        got.append(torch.func.jacfwd(f)(x))
        with fwAD.dual_level():
            got.append(fwAD.unpack_dual(f(fwAD.make_dual(x, tx))).tangent)
        params = _params(m)
        got += torch.func.jacfwd(
            lambda p: _flat_out(lambda *a: functional_call(m, p, a), hx)(x))(params).values()
        got.append(torch.func.hessian(lambda x: f(x).square().sum())(x))
        results.append(got)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("case", ["layer-lstm", "cell-gru"])
def test_forward_over_reverse_in_a_dual_level(case, device):
    """A plain backward inside torch.autograd.forward_ad's dual level (no create_graph) carries
    the tangents through the backward's own jvp rule: a Hessian-vector product."""
    import torch.autograd.forward_ad as fwAD
    (fast, ref), x, _ = _case(case, device)
    torch.manual_seed(6)
    tx = torch.randn_like(x)
    got = []
    for m in (fast, ref):
        with fwAD.dual_level():
            xd = fwAD.make_dual(x.clone().requires_grad_(), tx)
            (g,) = torch.autograd.grad(_out(m(xd)).square().sum(), xd)
            got.append((fwAD.unpack_dual(g).primal, fwAD.unpack_dual(g).tangent))
    for a, b in zip(*got):
        torch.testing.assert_close(a, b, **TOL)


def test_nested_forward_mode_raises(device):
    """torch passes an outer jvp level's tangents through no Function's jvp rule: a second
    forward order would come out zero, so it raises instead."""
    (fast, _), x, _ = _case("layer-gru", device)
    u = torch.ones_like(x)
    with pytest.raises(RuntimeError, match="nested forward mode"):
        torch.func.jvp(lambda x: torch.func.jvp(lambda x: _out(fast(x)), (x,), (u,))[1], (x,), (u,))
