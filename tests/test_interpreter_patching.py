"""The interpreter shim of the tests (tests/interpreter_patching.py) keeps the interpreter's
results and its behaviour outside launches."""
import os

import pytest
import torch
import triton
import triton.language as tl

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="Triton's interpreter only")


@triton.jit
def _plus_one(x):
    return x + 1


@triton.jit
def _kernel(p, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    v = tl.load(p + offs, mask=mask, other=0.0)
    acc = tl.zeros((BLOCK,), dtype=tl.float32) + _plus_one(v)   # tl.zeros: a tl.core helper
    tl.store(p + offs, _plus_one(acc), mask=mask)


def test_helpers_inside_a_launch_and_from_python():
    from triton.runtime import interpreter
    assert getattr(interpreter._patch_lang, "_once_per_launch", False)   # the shim is installed
    t = torch.arange(5, dtype=torch.float32)
    _kernel[(1,)](t, 5, BLOCK=8)
    assert torch.equal(t, torch.arange(5, dtype=torch.float32) + 2)
    assert int(_plus_one(3)) == 4   # a helper called from Python: outside any launch
    _kernel[(1,)](t, 5, BLOCK=8)    # later launches still patch for themselves
    assert torch.equal(t, torch.arange(5, dtype=torch.float32) + 4)
