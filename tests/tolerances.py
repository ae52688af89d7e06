"""The one tolerance table: results in each dtype against a float64 reference.

float64 is the parity bar (1e-9); float32 allows for different summation orders; the half
types store activations/gates in 8-11 mantissa bits while accumulating in fp32."""
import torch

TOL = {
    torch.float64: dict(atol=1e-9, rtol=1e-9),
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    torch.float16: dict(atol=1e-2, rtol=1e-2),
    torch.bfloat16: dict(atol=6e-2, rtol=6e-2),
}

# fp32 recurrent matmuls on CUDA run in TF32 when torch.backends.cudnn.allow_tf32 (torch's own
# RNNs follow that flag; it defaults to True): a 10-bit mantissa for the products.
TF32 = dict(atol=5e-3, rtol=5e-3)


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
