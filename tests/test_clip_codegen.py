"""The clip passes compile for a GPU (sm_90) and their dense path moves 16-byte vectors: the
old kernels read and wrote bf16 two bytes at a time (scalar ``ld.global.b16``), which is why
bf16 clipping ran far from the copy bandwidth.  No GPU needed: Triton's compiler and its bundled
ptxas run on the CPU, in a subprocess without the interpreter (clip_ptx_check.py)."""
import json
import os
import subprocess
import sys

import pytest
import triton.backends

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.skipif("nvidia" not in triton.backends.backends,
                    reason="this Triton has no NVIDIA backend to compile with")
def test_dense_path_uses_16_byte_vectors():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, os.path.join(HERE, "clip_ptx_check.py")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout)
    assert set(found) == {"norm-fp32", "norm-bf16", "scale-fp32", "scale-bf16"}
    for name, ops in found.items():
        assert "ld.global.v4.b32" in ops, f"{name}: no 16-byte loads in {ops}"
        if name.startswith("scale"):
            assert "st.global.v4.b32" in ops, f"{name}: no 16-byte stores in {ops}"
