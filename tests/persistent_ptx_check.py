"""Compiles the persistent layer kernels (kernels.persistent) for an sm_90 GPU on the CPU, at the
tiles ``persistent.plan`` picks, with the grid barrier on, and prints for each variant what a
persistent kernel depends on, as JSON: registers per thread and spilled bytes (Triton's bundled
ptxas, ``-v``), shared memory, warps, and which PTX instructions it holds (the barrier's
release/acquire atomics at GPU scope, the ``.cg`` loads of state other programs wrote).  Run by
tests/test_persistent_codegen.py in a process without TRITON_INTERPRET."""
import inspect
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)

import torch                                          # noqa: E402
import triton                                         # noqa: E402
import triton.language as tl                          # noqa: E402
from triton.backends.compiler import GPUTarget        # noqa: E402
from triton.backends.nvidia.compiler import get_ptxas  # noqa: E402
from triton.compiler import ASTSource                 # noqa: E402

from fastcells import cells                           # noqa: E402
from fastcells.kernels import persistent              # noqa: E402
from fastcells.kernels.common import dot_flags        # noqa: E402

ACC_PTRS = {"cs_ptr", "carry_ptr", "dc_ptr", "dcn_ptr"}   # kept in the accumulation dtype
SCALARS = {"t0", "t1", "T", "B", "H"}
TY = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


class Meta:
    """Stands in for a CUDA device in ``persistent.plan``: the barrier on, an H100/H200's SMs."""
    type = "cuda"
    index = -1


def ptxas_report(ptx):
    """(registers per thread, spill store bytes, spill load bytes) from ptxas -v."""
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        out = subprocess.run([get_ptxas(90).path, "-v", "--gpu-name", "sm_90a", src, "-o",
                              os.path.join(d, "k.cubin")], capture_output=True, text=True)
    text = out.stdout + out.stderr
    regs = int(re.search(r"Used (\d+) registers", text).group(1))
    stores, loads = (int(v) for v in re.search(
        r"(\d+) bytes spill stores, (\d+) bytes spill loads", text).groups())
    return regs, stores, loads


def compile_one(kernel, dtype, consts, num_warps, num_stages=None):
    names = list(inspect.signature(kernel.fn).parameters)
    signature = {}
    for n in names:
        if n in consts:
            signature[n] = "constexpr"
        elif n in ("batch_sizes_ptr", "sem_ptr"):
            signature[n] = "*i32"
        elif n.endswith("_ptr"):
            signature[n] = "*fp32" if n in ACC_PTRS else f"*{TY[dtype]}"
        elif n in SCALARS:
            signature[n] = "i32"
    return triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=consts),
                          target=GPUTarget("cuda", 90, 32), options=dict(num_warps=num_warps, **(
                              {} if num_stages is None else dict(num_stages=num_stages))))


def _shapes(mode, dtype):
    """(B, H, packed) the check compiles: the largest H whose W_hh part is RESIDENT, H = 512
    streamed at B = 64, and (LSTM bf16) packed and the wider batch tiles B = 256 needs."""
    kern = cells.CELLS[mode].kernels
    resident = max(h for h in (32, 64, 128, 256, 512)
                   if persistent.plan(kern, 64, h, dtype, Meta).resident)
    yield 64, resident, False
    yield 64, 512, False
    if mode == "lstm" and dtype == torch.bfloat16:
        yield 64, 512, True
        yield 256, 256, False
        yield 256, 512, False
        yield 256, 512, True


def variants():
    """(name, kernel, dtype, constexprs, plan) per cell, dtype, shape and direction, at the
    plan ``persistent.plan`` makes for an H100/H200 (132 SMs)."""
    persistent._sms[Meta.index] = 132
    for mode, dtype in itertools.product(("lstm", "gru", "rnn_tanh"),
                                         (torch.float32, torch.bfloat16)):
        kern = cells.CELLS[mode].kernels
        for B, H, packed in _shapes(mode, dtype):
            p = persistent.plan(kern, B, H, dtype, Meta)
            cell, relu, _ = persistent._cell(kern)
            upcast, precision = dot_flags(dtype, True)
            base = dict(CELL=cell, RELU=relu, BARRIER=True, RESIDENT=p.resident, ACC=tl.float32,
                        UPCAST=upcast, PRECISION=precision, BLOCK_B=p.block_b,
                        BLOCK_J=p.block_j, BLOCK_K=p.block_k, HAS_BATCH_SIZES=packed)
            tag = f"{mode}-{TY[dtype]}-B{B}-H{H}{'-packed' if packed else ''}"
            yield (f"fwd-{tag}", persistent._persistent_fwd_kernel, dtype,
                   dict(base, HAS_BIAS=True), p)
            yield (f"bwd-{tag}", persistent._persistent_bwd_kernel, dtype,
                   dict(base, HAS_DCN=cell == persistent.LSTM), p)


if __name__ == "__main__":
    found = {}
    for name, kernel, dtype, consts, p in variants():
        try:
            k = compile_one(kernel, dtype, consts, p.num_warps, persistent.NUM_STAGES)
        except Exception as e:   # report every failure, not only the first
            found[name] = dict(error=f"{type(e).__name__}: {str(e)[-800:]}")
            continue
        regs, spill_st, spill_ld = ptxas_report(k.asm["ptx"])
        ptx = k.asm["ptx"]
        found[name] = dict(
            regs=regs, spill_stores=spill_st, spill_loads=spill_ld, shared=k.metadata.shared,
            num_warps=p.num_warps, grid=list(p.grid), resident=p.resident,
            block_b=p.block_b, block_k=p.block_k,
            release_gpu=bool(re.search(r"atom\.global\.gpu\.release\.add", ptx)),
            acquire_gpu=bool(re.search(r"(?:ld|atom)\.global\.gpu\.acquire", ptx)),
            cg_loads=len(re.findall(r"ld\.global\.cg|cp\.async\.cg", ptx)),
            ca_async=len(re.findall(r"cp\.async\.ca", ptx)))
    json.dump(found, sys.stdout, indent=1)
    sys.exit(0)
