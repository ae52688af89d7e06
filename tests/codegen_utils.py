"""Run a compile-for-sm_90 check script (Triton's compiler and bundled ptxas on the CPU) in a
process without the interpreter, and return what it printed as JSON."""
import json
import os
import subprocess
import sys

import pytest
import triton.backends

HERE = os.path.dirname(os.path.abspath(__file__))

needs_nvidia_backend = pytest.mark.skipif("nvidia" not in triton.backends.backends,
                                          reason="this Triton has no NVIDIA backend to compile with")


def run_check(script, timeout=900):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, os.path.join(HERE, script)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)
