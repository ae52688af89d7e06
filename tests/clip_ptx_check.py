"""Compiles the clip passes for an sm_90 GPU (no GPU needed: Triton's compiler and its bundled
ptxas run on the CPU) and prints, per kernel and dtype, the global memory accesses of the PTX.
Run by tests/test_clip_host.py in a process without TRITON_INTERPRET (under the interpreter
@triton.jit gives no compilable function)."""
import json
import os
import re
import sys

os.environ.pop("TRITON_INTERPRET", None)

import triton                                         # noqa: E402
import triton.language as tl                          # noqa: E402
from triton.backends.compiler import GPUTarget        # noqa: E402
from triton.compiler import ASTSource                 # noqa: E402

from fastcells.kernels import clip as K               # noqa: E402

PASSES = {
    "norm": (K._clip_norm_partial_kernel,
             {"seg_ptr": "*i64", "chunk_ptr": "*i64", "partial_ptr": "*fp32", "p_bits": "i64"},
             {"KIND": 0}),
    "scale": (K._clip_scale_kernel,
              {"seg_ptr": "*i64", "chunk_ptr": "*i64", "coef_ptr": "*fp32"}, {}),
}
DTYPES = {"fp32": tl.float32, "bf16": tl.bfloat16}


def accesses(kernel, args, consts, dtype):
    consts = dict(consts, DTYPE=dtype, ACC=tl.float32, CHUNK=16384, BLOCK=1024)
    signature = dict(args, **{k: "constexpr" for k in consts})
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=consts),
                              target=GPUTarget("cuda", 90, 32))
    return sorted(set(re.findall(r"(?:ld|st)\.global[.\w]*", compiled.asm["ptx"])))


if __name__ == "__main__":
    out = {f"{name}-{dt}": accesses(*PASSES[name], DTYPES[dt]) for name in PASSES for dt in DTYPES}
    json.dump(out, sys.stdout)
