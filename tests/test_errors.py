"""Invalid input to the multi-layer modules: torch's exception type and message."""
import pytest
import torch

from rnn_utils import KINDS, assert_same_errors

T, B, I, H = 4, 3, 5, 6


def _bad_inputs(kind):
    lstm = kind == "lstm"
    hx = lambda *s: (torch.randn(*s), torch.randn(*s)) if lstm else torch.randn(*s)  # noqa: E731
    cases = {
        "input-size": (torch.randn(T, B, I + 1), None),
        "input-4d": (torch.randn(1, T, B, I), None),
        "input-1d": (torch.randn(I), None),
        "hidden-size": (torch.randn(T, B, I), hx(1, B, H + 1)),
        "hidden-batch": (torch.randn(T, B, I), hx(1, B + 1, H)),
        "hidden-layers": (torch.randn(T, B, I), hx(2, B, H)),
        "hidden-2d-batched": (torch.randn(T, B, I), hx(B, H)),
        "hidden-3d-unbatched": (torch.randn(T, I), hx(1, 1, H)),
        "dtype": (torch.randn(T, B, I, dtype=torch.float64), None),
        "empty-seq": (torch.randn(0, B, I), None),
    }
    if lstm:
        cases["cell-size"] = (torch.randn(T, B, I), (torch.randn(1, B, H), torch.randn(1, B, H + 1)))
    return cases


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_errors_match_torch(kind, backend, device):
    torch_cls, fast_cls, extra = KINDS[kind]
    ref = torch_cls(I, H, **extra).to(device)
    fast = fast_cls(I, H, **extra, backend=backend).to(device)
    assert_same_errors(ref, fast, _bad_inputs(kind), device)


@pytest.mark.parametrize("kind", list(KINDS))
def test_zero_batch_accepted(kind, device):
    """What torch accepts, fastcells accepts: an empty batch."""
    torch_cls, fast_cls, extra = KINDS[kind]
    ref = torch_cls(I, H, **extra).to(device)
    fast = fast_cls(I, H, **extra, backend="triton").to(device)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(T, 0, I, device=device)
    y_ref, _ = ref(x)
    y_fast, _ = fast(x)
    assert y_fast.shape == y_ref.shape
