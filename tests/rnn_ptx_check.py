"""Compiles every recurrent kernel variant for an sm_90 GPU on the CPU (Triton's compiler and its
bundled ptxas; no GPU needed) and prints the variants that failed, as JSON.  Run by
tests/test_rnn_codegen.py in a process without TRITON_INTERPRET (under the interpreter
@triton.jit gives no compilable function).  What the interpreter cannot show: that a kernel
compiles at all (tile shapes, pointer-typed branches, dtype casts)."""
import inspect
import itertools
import json
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)

import triton.language as tl                          # noqa: E402
import triton                                         # noqa: E402
from triton.backends.compiler import GPUTarget        # noqa: E402
from triton.compiler import ASTSource                 # noqa: E402

from fastcells.kernels import gru, lstm, rnn  # noqa: E402

ACC_PTRS = {"cs_ptr", "carry_ptr", "dc_ptr", "dcn_ptr"}   # kept in the accumulation dtype
SCALARS = {"t", "T", "B", "H", "K", "I"}


def compile_one(kernel, dtype, consts):
    names = [p for p in inspect.signature(kernel.fn).parameters]
    ty = {tl.float32: "fp32", tl.bfloat16: "bf16"}[dtype]
    signature = {}
    for n in names:
        if n in consts:
            signature[n] = "constexpr"
        elif n == "batch_sizes_ptr":
            signature[n] = "*i32"
        elif n.endswith("_ptr"):
            signature[n] = "*fp32" if n in ACC_PTRS else f"*{ty}"
        elif n in SCALARS:
            signature[n] = "i32"
    triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=consts),
                   target=GPUTarget("cuda", 90, 32))


def absent(fuse=False, lengths=True, dcn=True):
    """The pointers a variant passes as None (constexpr None, as a launch binds them): the
    hoisted projection of a fused step, the input and W_ih of a hoisted one, batch sizes of an
    unpacked batch, dL/dc_{T-1} when not given."""
    none = dict.fromkeys(("xp_ptr",) if fuse else ("x_ptr", "w_ih_ptr"))
    if not lengths:
        none["batch_sizes_ptr"] = None
    if not dcn:
        none["dcn_ptr"] = None
    return none


def variants():
    tiles = dict(ACC=tl.float32, BLOCK_B=16, BLOCK_H=32, BLOCK_K=32)
    for family, dtype in itertools.product(("lstm", "gru", "rnn"), (tl.float32, tl.bfloat16)):
        mod = {"lstm": lstm, "gru": gru, "rnn": rnn}[family]
        extra = {"RELU": False} if family == "rnn" else {}
        prec = "tf32" if dtype == tl.float32 else "ieee"
        base = dict(tiles, UPCAST=False, PRECISION=prec, **extra)
        fwd = getattr(mod, f"_{family}_fwd_step_kernel")
        bwd = getattr(mod, f"_{family}_bwd_step_kernel")
        for fuse, lengths, proj in itertools.product((False, True), (False, True), (False, True)):
            if proj and family != "lstm":
                continue
            yield (f"{family}-fwd-step-{dtype}-fuse{fuse}-len{lengths}-proj{proj}", fwd, dtype,
                   dict(base, HAS_BIAS=True, HAS_BATCH_SIZES=lengths, PROJ=proj, FUSE_X=fuse,
                        **absent(fuse=fuse, lengths=lengths)))
        for lengths, proj, dcn in itertools.product((False, True), (False, True), (False, True)):
            if (proj or dcn) and family != "lstm":   # only the LSTM takes dL/dc and W_hr
                continue
            yield (f"{family}-bwd-step-{dtype}-len{lengths}-proj{proj}-dcn{dcn}", bwd, dtype,
                   dict(base, HAS_BATCH_SIZES=lengths, PROJ=proj, HAS_DCN=dcn,
                        **absent(lengths=lengths, dcn=dcn)))
        if dtype == tl.float32:
            # Triton specializes an integer argument equal to 1 into a constant (B = 1: one
            # sequence; H = 1; T = 1: a cell step): a kernel must compile that way too.
            ones = dict(B=1, H=1, K=1, I=1)
            for kind, kernel, flags in (("fwd-step", fwd, dict(HAS_BIAS=True, FUSE_X=True, T=1,
                                                               **absent(fuse=True))),
                                        ("bwd-step", bwd, dict(HAS_DCN=True, T=1, **absent()))):
                yield (f"{family}-{kind}-{dtype}-size1", kernel, dtype,
                       {**base, "HAS_BATCH_SIZES": False, "PROJ": False, "FUSE_X": False,
                        **flags, **ones})
            # no biases: b_ih and b_hh are None
            yield (f"{family}-fwd-step-{dtype}-nobias", fwd, dtype,
                   dict(base, HAS_BIAS=False, HAS_BATCH_SIZES=False, PROJ=False, FUSE_X=False,
                        b_ih_ptr=None, b_hh_ptr=None, **absent()))


if __name__ == "__main__":
    failed, done = {}, []
    for name, kernel, dtype, consts in variants():
        names = set(inspect.signature(kernel.fn).parameters)
        consts = {k: v for k, v in consts.items() if k in names}
        try:
            compile_one(kernel, dtype, consts)
            done.append(name)
        except Exception as e:  # report every failure, not only the first
            failed[name] = f"{type(e).__name__}: {str(e)[-800:]}"
    json.dump({"compiled": done, "failed": failed}, sys.stdout)
