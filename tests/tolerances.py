"""The one tolerance table: results in each dtype against a float64 reference.

Derivation (each bound is within about 10x of the largest error the correct code shows on the
tests' shapes; measured on CPU through the interpreter, 3 seeds, tests/test_half.py's shapes):

* u(dt) is the unit roundoff: 2^-53 fp64, 2^-24 fp32, 2^-11 fp16, 2^-8 bf16.  Values are O(1)
  (states and gates lie in [-1, 1]), so one bound serves as atol and rtol.
* Every stored value (the output, the hoisted input projection, the saved gates) is rounded to
  its dtype: STORE_ROUNDINGS * u(dt) covers those roundings as they pass through the steps and
  layers (the half types show 0.3-1.1 u, fp32 0.7-3.7 u).
* Dot products of length n accumulate in fp32 for fp16/bf16 and in the dtype itself for fp32 and
  fp64: worst case n * u(acc) (Higham, Accuracy and Stability of Numerical Algorithms, 3.1).
  N is the longest reduction of the tests' shapes: I + H = 5 + 19 (tests/test_half.py).

  forward:   tol(dt) = 4 u(dt) + N u(acc)            fp32 1.7e-6 (errors up to 2.2e-7),
                                                     fp16 2.0e-3 (2.7e-4), bf16 1.6e-2 (4.3e-3)
  gradients: 8 u(dt) + TB u(acc), by relative norm   fp32 1.5e-6 (4.6e-7), fp16 3.9e-3 (9.0e-4),
             (they sum over the T*B = 18 rows)       bf16 3.1e-2 (1.3e-2)

fp64 is the parity bar against torch's own float64 modules: the same formula, with the
summation order of the weight gradients (T*B rows) in place of N.  Exact things (copies, the clip
total against torch's) are compared with rtol=0, atol=0, not with this table."""
import torch

U = {torch.float64: 2.0 ** -53, torch.float32: 2.0 ** -24, torch.float16: 2.0 ** -11,
     torch.bfloat16: 2.0 ** -8}
ACC = {torch.float64: torch.float64, torch.float32: torch.float32,
       torch.float16: torch.float32, torch.bfloat16: torch.float32}
STORE_ROUNDINGS = 4
N = 5 + 19       # the longest reduction in the tests' shapes (I + H)
TB = 6 * 3       # rows a weight gradient sums over (T * B)


def tolerance(dtype, n=N, roundings=STORE_ROUNDINGS):
    """roundings * u(dtype) + n * u(accumulation dtype), as atol = rtol."""
    t = roundings * U[dtype] + n * U[ACC[dtype]]
    return dict(atol=t, rtol=t)


TOL = {dt: tolerance(dt) for dt in U}

# Relative norm error of the gradients.
GRAD_REL_ERR = {dt: tolerance(dt, TB, 2 * STORE_ROUNDINGS)["rtol"] for dt in U}

# fp32 recurrent matmuls on CUDA run in TF32 when torch.backends.cudnn.allow_tf32 (torch's own
# RNNs follow that flag; it defaults to True): products with a 10-bit mantissa, u = 2^-11, and
# fp32 accumulation: the fp16 bound.
TF32 = tolerance(torch.float16)
TF32_GRAD_REL_ERR = GRAD_REL_ERR[torch.float16]


def fp32_overrides(dtype, device):
    """The tolerance overrides for ``dtype`` results computed on ``device``."""
    if dtype == torch.float32 and str(device).startswith("cuda") and torch.backends.cudnn.allow_tf32:
        return dict(TF32)
    return {}


def assert_close(actual, expected, dtype=None, **overrides):
    """Compare ``actual`` to a (usually float64) ``expected`` with the table's tolerance for
    ``dtype`` (default: actual's dtype); also asserts the dtype when ``dtype`` is given."""
    dt = dtype or actual.dtype
    if dtype is not None:
        assert actual.dtype == dtype, f"dtype {actual.dtype}, expected {dtype}"
    tol = dict(TOL[dt], **overrides)
    torch.testing.assert_close(actual.double(), expected.double(), **tol)
