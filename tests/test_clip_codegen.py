"""The clip passes compile for a GPU (sm_90) and their dense path moves 16-byte vectors: the
old kernels read and wrote bf16 two bytes at a time (scalar ``ld.global.b16``), which is why
bf16 clipping ran far from the copy bandwidth.  No GPU needed: Triton's compiler and its bundled
ptxas run on the CPU, in a subprocess without the interpreter (clip_ptx_check.py)."""
from codegen_utils import needs_nvidia_backend, run_check


@needs_nvidia_backend
def test_dense_path_uses_16_byte_vectors():
    found = run_check("clip_ptx_check.py", timeout=600)
    assert set(found) == {"norm-fp32", "norm-bf16", "scale-fp32", "scale-bf16"}
    for name, ops in found.items():
        assert "ld.global.v4.b32" in ops, f"{name}: no 16-byte loads in {ops}"
        if name.startswith("scale"):
            assert "st.global.v4.b32" in ops, f"{name}: no 16-byte stores in {ops}"
