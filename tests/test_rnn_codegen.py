"""Every recurrent kernel variant (step and resident, forward and backward, fp32 and bf16, fused
cell input, packed, projected, dL/dc given) compiles for an sm_90 GPU.  The interpreter checks the
arithmetic but not that a kernel compiles (tile shapes, pointer-typed branches, casts); Triton's
compiler and its bundled ptxas run on the CPU, in a subprocess without the interpreter
(rnn_ptx_check.py)."""
import json
import os
import subprocess
import sys

import pytest
import triton.backends

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.skipif("nvidia" not in triton.backends.backends,
                    reason="this Triton has no NVIDIA backend to compile with")
def test_every_rnn_kernel_variant_compiles_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, os.path.join(HERE, "rnn_ptx_check.py")], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout)
    assert not found["failed"], found["failed"]
    assert len(found["compiled"]) == 88
