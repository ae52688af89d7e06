"""Two gloo ranks on CPU clip DTensor gradients with fastcells and with torch, and compare.

Run by tests/test_clip_dtensor.py as ``python clip_dist_worker.py OUT.json``: two ranks (this
process and a spawned one) run every case, and rank 0 writes {case id: "ok" or what went wrong on which rank}.
The cases: an FSDP2 model (``fully_shard``; odd sizes, so the shards are uneven and start at odd
offsets) and DTensors with Shard(0), Shard(1) and Replicate placements; every norm order; the
triton (interpreter) and reference backends; clip_grad_norm_, get_total_norm,
clip_grads_with_norm_ (given torch's total), error_if_nonfinite on a non-finite shard.
"""
import json
import math
import os
import sys
import tempfile
import time
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2
NORMS = (2.0, 1.0, 0.0, math.inf, -math.inf, 3.0, -1.5)
BACKENDS = ("triton", "reference")
TOL = dict(rtol=1e-5, atol=1e-6)


def fsdp_models(mesh):
    from torch.distributed.fsdp import fully_shard

    def build():
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
        for layer in (m[0], m[2]):
            fully_shard(layer, mesh=mesh)
        fully_shard(m, mesh=mesh)
        x = torch.randn(4, 5, generator=torch.Generator().manual_seed(1 + dist.get_rank()))
        m(x).square().sum().backward()
        return list(m.parameters())
    return build(), build()


def dtensor_params(mesh):
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    def build():
        gen = torch.Generator().manual_seed(2)
        specs = [((5, 3), Shard(0)), ((3, 7), Shard(1)), ((4,), Replicate()), ((9,), Shard(0))]
        params = []
        for shape, placement in specs:
            full = torch.randn(shape, generator=gen)
            p = torch.nn.Parameter(distribute_tensor(torch.zeros(shape), mesh, [placement]))
            p.grad = distribute_tensor(full, mesh, [placement])
            params.append(p)
        return params
    return build(), build()


def full(t):
    from torch.distributed.tensor import DTensor
    return t.full_tensor() if isinstance(t, DTensor) else t


def check_total(ours, theirs):
    from torch.distributed.tensor import DTensor
    assert isinstance(ours, DTensor), f"total is a {type(ours).__name__}, torch gives a DTensor"
    assert ours.device_mesh == theirs.device_mesh
    assert ours.placements == theirs.placements, f"{ours.placements} != {theirs.placements}"
    a, b = full(ours), full(theirs)
    assert a.dtype == b.dtype and a.shape == b.shape
    torch.testing.assert_close(a, b, equal_nan=True, **TOL)


def check_grads(ours, theirs):
    for p, q in zip(ours, theirs):
        assert p.grad.placements == q.grad.placements
        torch.testing.assert_close(full(p.grad), full(q.grad), equal_nan=True, **TOL)


def case_clip(make, backend, p):
    import fastcells
    ours, theirs = make()
    total = fastcells.clip_grad_norm_(ours, 0.5, p, backend=backend)
    expected = torch.nn.utils.clip_grad_norm_(theirs, 0.5, p)
    check_total(total, expected)
    check_grads(ours, theirs)


def case_total(make, backend, p):
    import fastcells
    ours, theirs = make()
    total = fastcells.get_total_norm([q.grad for q in ours], p, backend=backend)
    check_total(total, torch.nn.utils.get_total_norm([q.grad for q in theirs], p))


def case_with_norm(make, backend):
    import fastcells
    ours, theirs = make()
    total = torch.nn.utils.get_total_norm([q.grad for q in theirs])
    fastcells.clip_grads_with_norm_(ours, 0.25, total, backend=backend)
    torch.nn.utils.clip_grads_with_norm_(theirs, 0.25, total)
    check_grads(ours, theirs)


def case_nonfinite(make, backend):
    """One rank's shard holds an inf: both ranks raise torch's error, no gradient touched."""
    import fastcells
    ours, theirs = make()
    for ps in (ours, theirs):
        if dist.get_rank() == 1:
            ps[0].grad.to_local().view(-1)[0] = math.inf
    before = [full(q.grad).clone() for q in ours]
    errors = []
    for fn in (lambda: torch.nn.utils.clip_grad_norm_(theirs, 0.5, error_if_nonfinite=True),
               lambda: fastcells.clip_grad_norm_(ours, 0.5, error_if_nonfinite=True,
                                                 backend=backend)):
        try:
            fn()
            errors.append(None)
        except RuntimeError as e:
            errors.append(str(e))
    assert errors[0] is not None and errors[1] == errors[0], errors
    for q, b in zip(ours, before):
        torch.testing.assert_close(full(q.grad), b, rtol=0, atol=0, equal_nan=True)


def case_names():
    """(id, model, backend, function, p): every norm order once per function on the fused
    path's DTensors; the FSDP2 model and the reference backend on a few (the interpreter is
    slow: the whole run stays within seconds)."""
    few = (2.0, math.inf, -math.inf)
    plan = {("dtensor", "triton"): (NORMS, NORMS), ("fsdp2", "triton"): (few, (0.0, -1.5)),
            ("dtensor", "reference"): (few, ()), ("fsdp2", "reference"): ((2.0,), (0.0,))}
    out = []
    for (model, backend), (clip_norms, total_norms) in plan.items():
        out += [(f"clip-{model}-{backend}-p{p}", model, backend, "clip", p) for p in clip_norms]
        out += [(f"total-{model}-{backend}-p{p}", model, backend, "total", p)
                for p in total_norms]
        out += [(f"{fn}-{model}-{backend}", model, backend, fn, None)
                for fn in ("with-norm", "nonfinite")]
    return out


def cases(mesh):
    makers = {"fsdp2": lambda: fsdp_models(mesh), "dtensor": lambda: dtensor_params(mesh)}
    for name, model, backend, fn, p in case_names():
        make = makers[model]
        if fn == "clip":
            yield name, lambda m=make, b=backend, p=p: case_clip(m, b, p)
        elif fn == "total":
            yield name, lambda m=make, b=backend, p=p: case_total(m, b, p)
        elif fn == "with-norm":
            yield name, lambda m=make, b=backend: case_with_norm(m, b)
        else:
            yield name, lambda m=make, b=backend: case_nonfinite(m, b)


def run(rank, store_path, out_path):
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank,
                            world_size=WORLD)
    from torch.distributed.device_mesh import init_device_mesh
    from fastcells.kernels import clip_launch

    mesh = init_device_mesh("cpu", (WORLD,))
    launches = []
    for launcher in ("multi_tensor_norm", "multi_tensor_scale_"):
        def counted(*a, __f=getattr(clip_launch, launcher), **k):
            launches.append(1)
            return __f(*a, **k)
        setattr(clip_launch, launcher, counted)
    results = {}
    t0 = time.perf_counter()
    for name, fn in cases(mesh):
        before = len(launches)
        t = time.perf_counter()
        try:
            fn()
            fused = len(launches) > before
            want = "-triton" in name
            assert fused == want, f"fused kernels ran: {fused}, expected {want}"
            results[name] = "ok"
        except Exception:
            results[name] = f"rank {rank}: {traceback.format_exc(limit=3)}"
        dist.barrier()
        if rank == 0 and os.environ.get("CLIP_DIST_TIMES"):
            print(f"{time.perf_counter() - t:6.2f}s {name}", flush=True)
    if rank == 0 and os.environ.get("CLIP_DIST_TIMES"):
        print(f"{time.perf_counter() - t0:6.2f}s all cases", flush=True)
    gathered = [None] * WORLD
    dist.all_gather_object(gathered, results)
    if rank == 0:
        merged = {k: next((r[k] for r in gathered if r[k] != "ok"), "ok") for k in results}
        with open(out_path, "w") as f:
            json.dump(merged, f)
    dist.destroy_process_group()


def child_main(rank, store_path, out_path):
    """Rank 1's process: run, then leave without the interpreter's teardown.  Torch's static
    destructors at exit can meet a still-joinable gloo thread and abort the process
    ("terminate called without an active exception", SIGABRT) after all its work is done."""
    code = 0
    try:
        run(rank, store_path, out_path)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(out_path):
    """Rank 0 in this process, rank 1 in a spawned one (one interpreter start fewer)."""
    os.environ["TRITON_INTERPRET"] = "1"     # CPU tensors; before fastcells (and triton) load
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        child = mp.get_context("spawn").Process(target=child_main, args=(1, store, out_path))
        child.start()
        try:
            run(0, store, out_path)
        finally:
            child.join(timeout=60)
            if child.is_alive():
                child.kill()
        if child.exitcode != 0:
            raise SystemExit(f"rank 1 exited with {child.exitcode}")


if __name__ == "__main__":
    main(sys.argv[1])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)   # as child_main: no teardown to abort after the results are written
