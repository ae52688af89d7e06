"""clip_grad_norm_, get_total_norm, clip_grads_with_norm_: parity with torch.nn.utils on every
backend, the fused kernels' own guarantees (determinism, no host synchronisation, layouts, 64-bit
offsets, table reuse), and the edge cases torch defines (or, for the inf norm of an empty tensor,
fails on)."""
import contextlib
import math
import types

import pytest
import torch
from tolerances import TOL

import fastcells
from fastcells.kernels import clip_plan as kclip
from fastcells.kernels import clip as kernels
from fastcells.kernels import clip_launch as klaunch

f64, f32, f16, bf16 = torch.float64, torch.float32, torch.float16, torch.bfloat16
INF = math.inf
BACKENDS = ["triton", "reference", "native"]
FUSED = ["triton", "reference"]          # where fastcells' own code runs
_raw_empty = torch.empty                  # before the NaN-poison fixture patches it
# Triton's interpreter converts loop bounds with a numpy deprecation warning (not ours)
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning")


# ------------------------------------------------------------------------------------ helpers
def _grad(shape, dtype, layout, gen, device, scale):
    """A gradient of ``shape`` in ``layout``: "c" contiguous, "t" permuted (dense), "gap" every
    other element of the last dim, "gap5" every other element of each of five dims."""
    values = torch.randn(shape, generator=gen) * scale
    kw = dict(dtype=dtype, device=device)
    if layout == "c":
        out = torch.zeros(shape, **kw)
    elif layout == "t":
        out = torch.zeros(shape[::-1], **kw).permute(*reversed(range(len(shape))))
    elif layout == "gap":
        out = torch.zeros(*shape[:-1], 2 * shape[-1], **kw)[..., ::2]
    elif layout == "gap5":
        out = torch.zeros([2 * s for s in shape], **kw)[::2, ::2, ::2, ::2, ::2]
    else:
        raise ValueError(layout)
    return out.copy_(values)


def make_params(specs, device, seed=0, scale=1.0):
    """Parameters with gradients per ``specs``: (shape, dtype, layout), layout "none" for no
    grad.  Deterministic: two calls give equal parameters with equal gradient layouts."""
    gen = torch.Generator().manual_seed(seed)
    params = []
    for shape, dtype, layout in specs:
        p = torch.nn.Parameter(torch.zeros(shape, dtype=dtype, device=device))
        if layout != "none":
            p.grad = _grad(shape, dtype, layout, gen, device, scale)
        params.append(p)
    return params


def grads_of(params):
    return [p.grad for p in params if p.grad is not None]


def assert_same_tensor(actual, expected, dtype=None, equal_nan=False):
    """``actual`` matches torch's ``expected``: dtype, device, shape and value (per-dtype
    tolerance of the table)."""
    assert actual.dtype == expected.dtype, f"dtype {actual.dtype}, torch gives {expected.dtype}"
    assert actual.device == expected.device, f"device {actual.device}, torch {expected.device}"
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, **TOL[dtype or actual.dtype], equal_nan=equal_nan)


def loosest(tensors):
    """The dtype whose tolerance bounds a total over ``tensors``: the least precise one (each
    per-tensor norm is rounded to its tensor's dtype, so two summation orders can give norms one
    ulp of that dtype apart).  Gradients are checked against torch's scaling by *our* total, in
    their own dtype's tolerance."""
    return max((t.dtype for t in tensors), key=lambda d: TOL[d]["rtol"])


def assert_total(total, expected, tensors, equal_nan=False):
    assert_same_tensor(total, expected, dtype=loosest(tensors), equal_nan=equal_nan)


def assert_grads_match(params, ref_params, equal_nan=False):
    for p, q in zip(params, ref_params):
        assert (p.grad is None) == (q.grad is None)
        if p.grad is not None:
            assert p.grad.stride() == q.grad.stride()
            assert_same_tensor(p.grad, q.grad, equal_nan=equal_nan)


def torch_clip(ref, max_norm, norm_type, total, foreach=None, error_if_nonfinite=False):
    """torch's clip_grad_norm_ on ``ref`` (its get_total_norm, then clip_grads_with_norm_),
    scaling by the given ``total`` (ours); returns torch's own total."""
    expected = torch.nn.utils.get_total_norm(grads_of(ref), norm_type, error_if_nonfinite, foreach)
    torch.nn.utils.clip_grads_with_norm_(ref, max_norm, total, foreach)
    return expected


def clip_both(specs, device, backend, max_norm, norm_type=2.0, scale=1.0, **kw):
    """(fastcells total, torch total, fastcells params, torch params) after clipping equal
    parameters with each."""
    params = make_params(specs, device, scale=scale)
    ref = make_params(specs, device, scale=scale)
    total = fastcells.clip_grad_norm_(params, max_norm, norm_type, backend=backend, **kw)
    return total, torch_clip(ref, max_norm, norm_type, total, **kw), params, ref


def same_error(fn, torch_fn, exc=Exception):
    """Both raise the same exception type with the same message."""
    with pytest.raises(exc) as theirs:
        torch_fn()
    with pytest.raises(type(theirs.value)) as ours:
        fn()
    assert str(ours.value) == str(theirs.value)


CASES = {
    "fp32-odd": [((7, 9), f32, "c"), ((123,), f32, "c"), ((5, 3, 2), f32, "c")],
    "fp64": [((7, 9), f64, "c"), ((13,), f64, "c")],
    "fp16": [((7, 9), f16, "c"), ((33,), f16, "c")],
    "bf16": [((7, 9), bf16, "c"), ((33,), bf16, "c")],
    "mixed": [((7, 9), f32, "c"), ((11,), f16, "c"), ((3, 5), bf16, "c"), ((4,), f64, "c")],
    "mixed-half": [((7, 9), f16, "c"), ((11,), bf16, "c")],
    "0d-0size": [((), f32, "c"), ((0,), f32, "c"), ((3, 0), f32, "c"), ((5,), f32, "c")],
    "none-grads": [((7,), f32, "none"), ((5, 3), f32, "c"), ((2,), f64, "none")],
    "noncontig": [((7, 9), f32, "t"), ((5, 6), f32, "gap"), ((2, 3, 2, 2, 3), f32, "gap5"),
                  ((3,), f32, "c")],
    # several chunks per tensor on the default tables (8192 elements, 16384 on a GPU)
    "large": [((3, 8193), f32, "c"), ((17,), bf16, "c"), ((4097, 5), f16, "gap")],
}
NORMS = [pytest.param(p, id=f"p{p}") for p in (2.0, 1.0, 0.0, INF, -INF, 3.0, 0.5, -1.5)] + [
    pytest.param("inf", id="p-str-inf")]


# ---------------------------------------------------------------------------- parity with torch
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("max_norm", [pytest.param(0.5, id="clips"), pytest.param(1e4, id="no-clip")])
@pytest.mark.parametrize("case", list(CASES))
def test_clip_grad_norm_matches_torch(case, max_norm, backend, device):
    total, expected, params, ref = clip_both(CASES[case], device, backend, max_norm)
    assert_total(total, expected, grads_of(ref))
    assert (expected.item() > max_norm) == (max_norm == 0.5)     # the case does what it says
    assert_grads_match(params, ref)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("norm_type", NORMS)
@pytest.mark.parametrize("case", ["fp32-odd", "fp16", "mixed", "noncontig"])
def test_norm_types_match_torch(case, norm_type, backend, device):
    total, expected, params, ref = clip_both(CASES[case], device, backend, 1.0, norm_type)
    assert_total(total, expected, grads_of(ref))
    assert_grads_match(params, ref)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("norm_type", [2.0, INF, 0.5])
@pytest.mark.parametrize("case", ["fp32-odd", "mixed", "0d-0size", "large"])
def test_get_total_norm_matches_torch(case, norm_type, backend, device):
    tensors = grads_of(make_params(CASES[case], device))
    before = [t.clone() for t in tensors]
    total = fastcells.get_total_norm(tensors, norm_type, backend=backend)
    # torch raises for the inf norm of an empty tensor; the right answer ignores it
    nonempty = [t for t in tensors if t.numel() or norm_type != INF]
    assert_total(total, torch.nn.utils.get_total_norm(nonempty, norm_type), tensors)
    for t, b in zip(tensors, before):
        assert torch.equal(t, b)                      # get_total_norm changes nothing


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("total_dtype", [f32, f64, f16])
@pytest.mark.parametrize("total", [pytest.param(3.7, id="clips"), pytest.param(0.2, id="no-clip"),
                                   pytest.param(INF, id="inf"), pytest.param(math.nan, id="nan")])
def test_clip_grads_with_norm_matches_torch(total, total_dtype, backend, device):
    specs = CASES["mixed"] + [((6, 5), f32, "gap")]
    params, ref = make_params(specs, device), make_params(specs, device)
    t = torch.tensor(total, dtype=total_dtype, device=device)
    assert fastcells.clip_grads_with_norm_(params, 1.5, t, backend=backend) is None
    torch.nn.utils.clip_grads_with_norm_(ref, 1.5, t)
    assert_grads_match(params, ref, equal_nan=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_clip_grads_with_norm_float_total_errors_as_torch(backend, device):
    params = make_params(CASES["fp32-odd"], device)
    same_error(lambda: fastcells.clip_grads_with_norm_(params, 1.0, 2.5, backend=backend),
               lambda: torch.nn.utils.clip_grads_with_norm_(params, 1.0, 2.5), TypeError)


# ------------------------------------------------------------------------------ non-finite grads
NONFINITE = [pytest.param(v, id=n) for v, n in ((INF, "inf"), (-INF, "neg-inf"), (math.nan, "nan"))]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm_type", [2.0, INF, -INF, 0.0])
@pytest.mark.parametrize("bad", NONFINITE)
def test_nonfinite_grads_match_torch(bad, norm_type, backend, device):
    specs = [((7, 9), f32, "c"), ((5,), f16, "c")]
    params, ref = make_params(specs, device), make_params(specs, device)
    for ps in (params, ref):
        ps[0].grad[3, 4] = bad
    total = fastcells.clip_grad_norm_(params, 1.0, norm_type, backend=backend)
    expected = torch.nn.utils.clip_grad_norm_(ref, 1.0, norm_type)
    assert_total(total, expected, grads_of(ref), equal_nan=True)
    assert_grads_match(params, ref, equal_nan=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm_type", [2.0, INF])
@pytest.mark.parametrize("bad", NONFINITE)
def test_error_if_nonfinite_raises_before_touching(bad, norm_type, backend, device):
    specs = [((7, 9), f32, "c"), ((5,), f16, "c")]
    params, ref = make_params(specs, device), make_params(specs, device)
    for ps in (params, ref):
        ps[1].grad[2] = bad
    before = [p.grad.clone() for p in params]
    same_error(lambda: fastcells.clip_grad_norm_(params, 1.0, norm_type, error_if_nonfinite=True,
                                                 backend=backend),
               lambda: torch.nn.utils.clip_grad_norm_(ref, 1.0, norm_type, error_if_nonfinite=True),
               RuntimeError)
    for p, b in zip(params, before):
        torch.testing.assert_close(p.grad, b, rtol=0, atol=0, equal_nan=True)
    same_error(lambda: fastcells.get_total_norm(grads_of(params), norm_type, True, backend=backend),
               lambda: torch.nn.utils.get_total_norm(grads_of(ref), norm_type, True), RuntimeError)


@pytest.mark.parametrize("backend", FUSED)
def test_error_if_nonfinite_passes_finite(backend, device):
    total, expected, params, ref = clip_both(CASES["mixed"], device, backend, 0.5,
                                             error_if_nonfinite=True)
    assert_total(total, expected, grads_of(ref))
    assert_grads_match(params, ref)


# ------------------------------------------------------------------------- the inputs torch takes
@pytest.mark.parametrize("backend", BACKENDS)
def test_single_tensor(backend, device):
    (p,), (q,) = make_params([((5, 7), f32, "c")], device), make_params([((5, 7), f32, "c")], device)
    assert_same_tensor(fastcells.clip_grad_norm_(p, 0.3, backend=backend),
                       torch.nn.utils.clip_grad_norm_(q, 0.3))
    assert_grads_match([p], [q])
    assert_same_tensor(fastcells.get_total_norm(p.grad, 3.0, backend=backend),
                       torch.nn.utils.get_total_norm(q.grad, 3.0))
    fastcells.clip_grads_with_norm_(p, 0.1, torch.tensor(2.0, device=device), backend=backend)
    torch.nn.utils.clip_grads_with_norm_(q, 0.1, torch.tensor(2.0, device=device))
    assert_grads_match([p], [q])


@pytest.mark.parametrize("backend", BACKENDS)
def test_generator(backend, device):
    specs = CASES["none-grads"] + CASES["fp16"]
    params, ref = make_params(specs, device), make_params(specs, device)
    gen = (p for p in params)
    assert isinstance(gen, types.GeneratorType)
    total = fastcells.clip_grad_norm_(gen, 0.5, backend=backend)
    assert_total(total, torch_clip(ref, 0.5, 2.0, total), grads_of(ref))
    assert_grads_match(params, ref)
    gen = (p.grad for p in params if p.grad is not None)
    assert_total(fastcells.get_total_norm(gen, backend=backend),
                 torch.nn.utils.get_total_norm(p.grad for p in ref if p.grad is not None),
                 grads_of(ref))


@pytest.mark.parametrize("backend", BACKENDS)
def test_nothing_to_clip(backend, device):
    params = make_params([((3,), f32, "none"), ((2, 2), f64, "none")], device)
    for got in (fastcells.clip_grad_norm_(params, 1.0, backend=backend),
                fastcells.clip_grad_norm_([], 1.0, backend=backend),
                fastcells.get_total_norm([], INF, backend=backend)):
        assert_same_tensor(got, torch.tensor(0.0))         # torch's: CPU, default dtype
    assert fastcells.clip_grads_with_norm_(params, 1.0, torch.tensor(5.0), backend=backend) is None
    assert all(p.grad is None for p in params)
    with pytest.warns(UserWarning, match="`parameters` is an empty generator"):
        fastcells.clip_grad_norm_((p for p in []), 1.0, backend=backend)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("foreach", [None, True, False])
def test_foreach_accepted(foreach, backend, device):
    total, expected, params, ref = clip_both(CASES["mixed"], device, backend, 0.5, foreach=foreach)
    assert_total(total, expected, grads_of(ref))
    assert_grads_match(params, ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_foreach_true_unsupported_device_errors_as_torch(backend):
    p = torch.nn.Parameter(torch.zeros(3, device="meta"))
    p.grad = torch.ones(3, device="meta")
    same_error(lambda: fastcells.clip_grad_norm_([p], 1.0, foreach=True, backend=backend),
               lambda: torch.nn.utils.clip_grad_norm_([p], 1.0, foreach=True), RuntimeError)


@pytest.mark.parametrize("backend", BACKENDS)
def test_invalid_arguments_error_as_torch(backend, device):
    params = make_params(CASES["fp32-odd"], device)
    same_error(lambda: fastcells.clip_grad_norm_(params, 1.0, "two", backend=backend),
               lambda: torch.nn.utils.clip_grad_norm_(params, 1.0, "two"), ValueError)
    before = [p.grad.clone() for p in params]
    same_error(lambda: fastcells.clip_grad_norm_(params, "one", backend=backend),
               lambda: torch.nn.utils.clip_grad_norm_(params, "one"), ValueError)
    assert all(torch.equal(p.grad, b) for p, b in zip(params, before))
    same_error(lambda: fastcells.get_total_norm(grads_of(params), "x", backend=backend),
               lambda: torch.nn.utils.get_total_norm(grads_of(params), "x"), ValueError)
    with pytest.raises(ValueError, match="unknown fastcells backend"):
        fastcells.clip_grad_norm_(params, 1.0, backend="cudnn")


@pytest.mark.parametrize("backend", BACKENDS)
def test_none_in_tensor_list_errors_as_torch(backend, device):
    t = torch.ones(3, device=device)
    same_error(lambda: fastcells.get_total_norm([t, None], backend=backend),
               lambda: torch.nn.utils.get_total_norm([t, None]), RuntimeError)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("foreach", [None, True])
def test_clip_grads_with_1d_total_errors_as_torch(foreach, backend, device):
    """A one-element 1-d total_norm: torch's foreach scale refuses it (and leaves the grads)."""
    params = make_params(CASES["fp32-odd"], device)
    before = [p.grad.clone() for p in params]
    total = torch.tensor([2.0], device=device)
    same_error(lambda: fastcells.clip_grads_with_norm_(params, 1.0, total, foreach,
                                                       backend=backend),
               lambda: torch.nn.utils.clip_grads_with_norm_(params, 1.0, total, foreach),
               RuntimeError)
    assert all(torch.equal(p.grad, b) for p, b in zip(params, before))


def test_unknown_backend_errors_without_gradients(device):
    """The backend name is checked before anything else, even with nothing to clip."""
    params = make_params([((3,), f32, "none")], device)
    for call in (lambda: fastcells.clip_grad_norm_(params, 1.0, backend="cudnn"),
                 lambda: fastcells.clip_grad_norm_([], 1.0, backend="cudnn"),
                 lambda: fastcells.get_total_norm([], backend="cudnn"),
                 lambda: fastcells.clip_grads_with_norm_(params, 1.0, torch.tensor(1.0),
                                                         backend="cudnn")):
        with pytest.raises(ValueError, match="unknown fastcells backend 'cudnn'"):
            call()


@pytest.mark.parametrize("backend", FUSED)
def test_overlapping_grad_errors_as_torch_untouched(backend, device):
    specs = [((4, 3), f32, "c"), ((5,), f32, "c")]
    params, ref = make_params(specs, device), make_params(specs, device)
    for ps in (params, ref):
        ps[1].grad = torch.full((1,), 2.0, device=device).expand(5)   # 5 elements, 1 location
    before = params[0].grad.clone()
    same_error(lambda: fastcells.clip_grad_norm_(params, 0.1, backend=backend),
               lambda: torch.nn.utils.clip_grad_norm_(ref, 0.1), RuntimeError)
    assert torch.equal(params[0].grad, before)
    # reading an expanded tensor is fine: every logical element counts
    total = fastcells.get_total_norm(grads_of(params), backend=backend)
    assert_same_tensor(total, torch.nn.utils.get_total_norm(grads_of(params)))


@pytest.mark.parametrize("backend", ["auto", "triton", "reference", "native"])
def test_backend_choice(backend, monkeypatch, device):
    """use_backend picks the implementation: triton builds the kernels' tables, native calls
    torch's own function, reference neither; auto is triton on CUDA, native otherwise."""
    calls = []
    kclip.clear_cache()                  # a cached plan would skip the (patched) builder
    plan, native = kclip.plan, fastcells.clip._torch_clip_grad_norm_   # torch's, bound at import
    monkeypatch.setattr(kclip, "plan", lambda *a, **k: calls.append("triton") or plan(*a, **k))
    monkeypatch.setattr(fastcells.clip, "_torch_clip_grad_norm_",
                        lambda *a, **k: calls.append("native") or native(*a, **k))
    params = make_params(CASES["fp32-odd"], device)
    with fastcells.use_backend(backend):
        fastcells.clip_grad_norm_(params, 1.0)
    expected = {"auto": "triton" if device == "cuda" else "native"}.get(backend, backend)
    assert calls == ([] if expected == "reference" else [expected])


# ------------------------------------------------------- where torch fails for no good reason
@pytest.mark.parametrize("backend", FUSED)
def test_empty_tensor_norms(backend, device):
    x = torch.tensor([0.5, -3.0, 2.0], device=device)
    e = torch.zeros(0, device=device)
    e2 = torch.zeros(4, 0, dtype=f64, device=device)
    # inf norm: max over no elements is 0, the identity of max over |x| >= 0
    got = fastcells.get_total_norm([e, x, e2], INF, backend=backend)
    assert_same_tensor(got, torch.tensor(3.0, dtype=f64, device=device))
    assert_same_tensor(fastcells.get_total_norm([e], INF, backend=backend),
                       torch.tensor(0.0, device=device))
    # -inf and p < 0: the empty tensor's norm is inf, which drops out of the total
    for p in (-INF, -1.5):
        assert_same_tensor(fastcells.get_total_norm([e, x], p, backend=backend),
                           torch.nn.utils.get_total_norm([x], p))
    # clipping with such a grad works (torch: RuntimeError)
    params = make_params([((0, 3), f32, "c"), ((7,), f32, "c")], device)
    ref = make_params([((7,), f32, "c")], device)
    total = fastcells.clip_grad_norm_(params, 0.2, INF, backend=backend)
    assert_same_tensor(total, torch.nn.utils.clip_grad_norm_(ref, 0.2, INF))
    assert_grads_match(params[1:], ref)
    with pytest.raises(RuntimeError, match="norm on an empty tensor"):
        fastcells.get_total_norm([e, x], INF, backend="native")   # torch's own


# ------------------------------------------------------------------- the fused kernels' promises
@pytest.mark.parametrize("norm_type", [2.0, INF, 3.0])
def test_bit_identical_runs(norm_type, device):
    specs = CASES["large"] + CASES["mixed"]
    runs = []
    for _ in range(3):
        params = make_params(specs, device, scale=7.0)
        total = fastcells.clip_grad_norm_(params, 0.5, norm_type, backend="triton")
        runs.append((total, [p.grad for p in params]))
    for total, grads in runs[1:]:
        assert torch.equal(total, runs[0][0])
        assert all(torch.equal(g, h) for g, h in zip(grads, runs[0][1]))


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 0.0, INF, -INF, 2.5, -0.5])
@pytest.mark.parametrize("dtype", [f64, f32, f16, bf16])
def test_multi_chunk_reduction(dtype, norm_type, device):
    """Tiny chunks: many partials per tensor in the two-stage reduction, every layout."""
    specs = [((37, 5), dtype, "c"), ((9, 11), dtype, "t"), ((2, 3, 2, 2, 3), dtype, "gap5"),
             ((13, 7), dtype, "gap"), ((1,), dtype, "c")]
    grads = grads_of(make_params(specs, device))
    plan = kclip.plan(grads, chunk=48, block=16)
    assert plan.groups[0].n_chunks > len(grads) + 4
    total, coef = klaunch.multi_tensor_norm(plan, norm_type, 0.25)
    assert_same_tensor(total, torch.nn.utils.get_total_norm(grads, norm_type))
    before = [g.clone() for g in grads]
    klaunch.multi_tensor_scale_(plan, coef)
    for g, b in zip(grads, before):
        torch.testing.assert_close(g, (b.to(coef.dtype) * coef).to(dtype), **TOL[dtype])


@pytest.mark.parametrize("dtype", [f64, f32, f16, bf16])
def test_dense_views_at_odd_offsets(dtype, device):
    """Dense gradients at offsets that are not 16-byte aligned (FSDP2's shards are views of one
    flat buffer): a general segment for the few elements before the first aligned one, then the
    vectorised CONTIG path in full blocks and a tail, over several chunks."""
    gen = torch.Generator().manual_seed(3)
    flat = torch.randn(700, generator=gen).to(device, dtype)
    grads = [flat[1:150], flat[150:153], flat[153:154], flat[160:331].view(9, 19), flat[331:]]
    plan = kclip.plan(grads, chunk=48, block=16)
    rows = plan.groups[0].seg
    contig = rows[:, kernels.Seg.CONTIG] == 1
    assert contig.any() and not contig.all()           # both paths run
    assert (rows[contig, kernels.Seg.ADDR] % kernels.ALIGN == 0).all()
    for p in (2.0, -INF, 0.5):
        total, _ = klaunch.multi_tensor_norm(plan, p)
        assert_same_tensor(total, torch.nn.utils.get_total_norm(grads, p))
    before = flat.clone()
    coef = torch.tensor(0.37, dtype=dtype, device=device)
    klaunch.multi_tensor_scale_(plan, coef)
    expected = before * coef
    for gap in (slice(0, 1), slice(154, 160)):          # in no gradient: untouched
        expected[gap] = before[gap]
    torch.testing.assert_close(flat, expected, rtol=0, atol=0)


def _random_view(gen, device, dtype):
    """A random strided view: some dims sliced with a step, then permuted."""
    nd = int(torch.randint(1, 6, (), generator=gen))
    sizes = [int(s) for s in torch.randint(1, 5, (nd,), generator=gen)]
    steps = [int(s) for s in torch.randint(1, 3, (nd,), generator=gen)]
    base = torch.randn([s * k + 1 for s, k in zip(sizes, steps)], generator=gen)
    view = base[tuple(slice(0, s * k, k) for s, k in zip(sizes, steps))]
    view = view.permute(*torch.randperm(nd, generator=gen).tolist())
    out = torch.zeros(base.shape, dtype=dtype, device=device)
    out = out.as_strided(view.shape, view.stride(), view.storage_offset())
    return out.copy_(view)


@pytest.mark.parametrize("dtype", [f32, bf16])
def test_random_layouts(dtype, device):
    gen = torch.Generator().manual_seed(5)
    grads = [_random_view(gen, device, dtype) for _ in range(12)]
    grads.append(torch.randn(3, 1, generator=gen).to(device, dtype).expand(3, 4))  # overlapping
    plan = kclip.plan(grads, chunk=32, block=16)
    for p in (2.0, INF, -1.5):
        total, _ = klaunch.multi_tensor_norm(plan, p)
        assert_same_tensor(total, torch.nn.utils.get_total_norm(grads, p))
    grads = grads[:-1]                                   # scaling needs distinct elements
    plan = kclip.plan(grads, chunk=32, block=16)
    before = [g.clone() for g in grads]
    coef = torch.tensor(0.37, dtype=dtype, device=device)
    klaunch.multi_tensor_scale_(plan, coef)
    for g, b in zip(grads, before):
        torch.testing.assert_close(g, b * coef, rtol=0, atol=0)


def test_table_cache_reuse_and_rebuild(device):
    specs = [((7, 9), f32, "c"), ((5,), f32, "c")]
    params, ref = make_params(specs, device), make_params(specs, device)
    plan = kclip.plan(grads_of(params))
    assert kclip.plan(grads_of(params)) is plan                    # unchanged: reused
    fastcells.clip_grad_norm_(params, 1.0, backend="triton")
    torch.nn.utils.clip_grad_norm_(ref, 1.0)
    assert kclip.plan(grads_of(params)) is plan                    # clipped in place: still valid
    # a new .grad tensor elsewhere, and a new layout, both rebuild the tables
    for ps in (params, ref):
        ps[0].grad = ps[0].grad * 3
    assert kclip.plan(grads_of(params)) is not plan
    params[1].grad = torch.zeros(10, device=device)[::2].copy_(params[1].grad)
    total = fastcells.clip_grad_norm_(params, 1.0, backend="triton")
    assert_same_tensor(total, torch.nn.utils.clip_grad_norm_(ref, 1.0))
    assert_grads_match(params[:1], ref[:1])
    assert_same_tensor(params[1].grad.contiguous(), ref[1].grad)


def test_table_offsets_are_64_bit():
    big = torch.zeros(2**31 + 5, dtype=f16, device="meta")       # no memory behind it
    group = kclip._build_group([big], 2**20)
    chunks = group.chunks
    assert chunks.dtype == torch.int64 and chunks[-1, 1] == 2**31
    assert group.seg[0, 1] == 2**31 + 5


@pytest.mark.parametrize("backend", FUSED)
def test_element_offsets_past_2_31(backend, device):
    """Strides past 2**31 elements, in the 1-d fast path and the n-d path (a 4 GiB buffer,
    only a few of whose pages are ever touched)."""
    stride = 2**31 + 7
    try:
        buf = _raw_empty(stride + 8, dtype=f16, device=device)
    except (RuntimeError, MemoryError) as e:        # a resource limit, not a result
        pytest.skip(f"cannot reserve a 4 GiB buffer: {e}")
    one = buf.as_strided((2,), (stride,))                   # 1-d, strided
    two = buf.as_strided((2, 2), (stride, 5), 1)            # 2-d, gappy
    one.copy_(torch.tensor([3.0, -4.0]))
    two.copy_(torch.tensor([[1.0, 2.0], [-2.0, 4.0]]))
    params = [torch.nn.Parameter(torch.zeros(2, dtype=f16, device=device)),
              torch.nn.Parameter(torch.zeros(2, 2, dtype=f16, device=device))]
    params[0].grad, params[1].grad = one, two
    ref = [one.clone(), two.clone()]
    total = fastcells.clip_grad_norm_(params, 1.0, backend=backend)
    expected = torch.nn.utils.get_total_norm(ref)
    assert_same_tensor(total, expected)
    coef = 1.0 / (expected.float() + 1e-6)
    torch.testing.assert_close(one, (ref[0] * coef).half(), **TOL[f16])
    torch.testing.assert_close(two, (ref[1] * coef).half(), **TOL[f16])
    del one, two, buf


# ---------------------------------------------------------------------- no host synchronisation
class HostReadback(AssertionError):
    pass


_READBACK = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__",
             "__complex__", "__array__")


@contextlib.contextmanager
def no_host_sync(monkeypatch, device):
    """On CUDA: torch's sync debug mode set to "error".  On CPU: every Tensor method that reads
    a value back to Python raises."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return

    def forbid(name):
        def read_back(self, *args, **kwargs):
            raise HostReadback(f"Tensor.{name} read a tensor value back to the host")
        return read_back

    with monkeypatch.context() as m:
        for name in _READBACK:
            m.setattr(torch.Tensor, name, forbid(name))
        yield


def _sync_error(device):
    return RuntimeError if device == "cuda" else HostReadback


@pytest.mark.parametrize("backend", [None, "triton", "reference"])
def test_no_host_sync(backend, monkeypatch, device):
    specs = CASES["mixed"] + CASES["noncontig"]
    for step in range(2):                                # building the tables, then reusing them
        params, ref = make_params(specs, device, seed=step), make_params(specs, device, seed=step)
        total_norm = torch.tensor(4.0, device=device)
        with no_host_sync(monkeypatch, device):
            total = fastcells.clip_grad_norm_(params, 0.5, backend=backend)
            norm = fastcells.get_total_norm(grads_of(params), INF, backend=backend)
            fastcells.clip_grads_with_norm_(params, 1.0, total_norm, backend=backend)
        assert_total(total, torch_clip(ref, 0.5, 2.0, total), grads_of(ref))
        assert_total(norm, torch.nn.utils.get_total_norm(grads_of(ref), INF), grads_of(ref))
        torch.nn.utils.clip_grads_with_norm_(ref, 1.0, total_norm)
        assert_grads_match(params, ref)


def test_no_host_sync_guard_catches_readbacks(monkeypatch, device):
    """The guard above can fail: error_if_nonfinite=True must read the total back, and so does
    a read planted in the default path."""
    params = make_params(CASES["mixed"], device)
    with pytest.raises(_sync_error(device)):
        with no_host_sync(monkeypatch, device):
            fastcells.clip_grad_norm_(params, 0.5, error_if_nonfinite=True, backend="triton")
    scale = klaunch.multi_tensor_scale_

    def planted(plan, coef):
        if coef.item() < 1.0:
            scale(plan, coef)

    monkeypatch.setattr(klaunch, "multi_tensor_scale_", planted)
    with pytest.raises(_sync_error(device)):
        with no_host_sync(monkeypatch, device):
            fastcells.clip_grad_norm_(params, 0.5, backend="triton")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_capture():
    specs = CASES["mixed"] + CASES["noncontig"]
    params, ref = make_params(specs, "cuda"), make_params(specs, "cuda")
    originals = [p.grad.clone() for p in params]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fastcells.clip_grad_norm_(params, 0.5)               # warm-up: compile, build the tables
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        total = fastcells.clip_grad_norm_(params, 0.5)
    for p, o in zip(params, originals):
        p.grad.copy_(o)
    graph.replay()
    torch.cuda.synchronize()
    assert_total(total, torch_clip(ref, 0.5, 2.0, total), grads_of(ref))
    assert_grads_match(params, ref)
