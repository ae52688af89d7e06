"""Every recurrent kernel variant (forward and backward, fp32 and bf16, fused cell input,
packed, projected, dL/dc given, no biases, sizes of 1; absent tensors passed as None) compiles
for an sm_90 GPU.  The interpreter checks the arithmetic but not that a kernel compiles (tile
shapes, pointer-typed branches, casts); Triton's compiler and its bundled ptxas run on the CPU,
in a subprocess without the interpreter (rnn_ptx_check.py)."""
from codegen_utils import needs_nvidia_backend, run_check


@needs_nvidia_backend
def test_every_rnn_kernel_variant_compiles_for_sm90():
    found = run_check("rnn_ptx_check.py")
    assert not found["failed"], found["failed"]
    assert len(found["compiled"]) == 65
