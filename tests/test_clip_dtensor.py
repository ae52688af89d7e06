"""DTensor gradients (FSDP2's, tensor parallel's) through the fused clip: two gloo ranks on CPU,
against torch's own clip on the same gradients (see clip_dist_worker.py for the cases).  The
ranks run once, in a subprocess (a process group cannot be torn down and rebuilt cleanly inside
the test process); each case is one test here."""
import json
import os
import subprocess
import sys

import pytest
import torch.distributed as dist

import clip_dist_worker

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = clip_dist_worker.case_names()

def _interpreter_broken():
    # The ranks run the kernels under Triton's interpreter on CPU, and triton 3.6's interpreter
    # fails with numpy >= 2.4 ("only 0-dimensional arrays can be converted to Python scalars"):
    # the GPU machines pair those two; CI pins numpy < 2.4.
    import numpy
    import triton
    major_minor = lambda v: tuple(int(p) for p in v.split(".")[:2])  # noqa: E731
    return triton.__version__.startswith("3.6.") and major_minor(numpy.__version__) >= (2, 4)


pytestmark = [
    pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                       reason="needs torch.distributed with gloo"),
    pytest.mark.skipif(_interpreter_broken(),
                       reason="triton 3.6's interpreter fails with numpy >= 2.4 (the CPU ranks)"),
]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("clip_dist") / "results.json"
    proc = subprocess.run([sys.executable, os.path.join(HERE, "clip_dist_worker.py"), str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_every_case_ran(results):
    assert sorted(results) == sorted(c[0] for c in CASES)


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_case(results, name):
    assert results[name] == "ok", results[name]
