"""Bit-for-bit regression check of the recurrent host path: outputs and gradients of a fixed set
of shapes per cell, on the triton backend (on CPU through Triton's interpreter) and on the
reference backend.

A change that restructures the host side without changing behaviour must leave every tensor
identical to the last bit.  Run it on the code before the change with ``--save FILE``, and on
the code after with ``--compare FILE``: it lists every case and tensor that differs (max
absolute difference) and exits 1 if any does.

Run: ``TRITON_INTERPRET=1 python bench/bitwise_check.py --save base.pt`` (about a minute on
CPU), later ``... --compare base.pt``.
"""
import argparse
import contextlib
import os
import sys

if __name__ == "__main__" and "TRITON_INTERPRET" not in os.environ:
    import torch as _torch
    if not _torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"   # before triton decorates the kernels

import torch
from torch import nn

MODES = {"lstm": ("LSTM", "LSTMCell", {}), "gru": ("GRU", "GRUCell", {}),
         "rnn_tanh": ("RNN", "RNNCell", {"nonlinearity": "tanh"}),
         "rnn_relu": ("RNN", "RNNCell", {"nonlinearity": "relu"})}
T, B, I, H = 3, 3, 3, 5


@contextlib.contextmanager
def _env(**kv):
    old = {k: os.environ.get(k) for k in kv}
    os.environ.update(kv)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _flat(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, nn.utils.rnn.PackedSequence):
        return [out.data]
    return [t for o in out for t in _flat(o)]


def _loss(outs):
    # fixed weights (no random draw: it runs under vmap too), a different one per element
    return sum((o * torch.arange(o.numel(), dtype=o.dtype).view(o.shape).mul(0.37 + k).sin())
               .sum() for k, o in enumerate(outs))


def _layer_cases(mode, dtype):
    """(name, constructor keywords, make input, hx) of the multi-layer module cases."""
    def seq(batch_first=False):
        g = torch.Generator().manual_seed(2)
        shape = (B, T, I) if batch_first else (T, B, I)
        return torch.randn(shape, generator=g, dtype=dtype)

    def packed():
        g = torch.Generator().manual_seed(3)
        xs = [torch.randn(n, I, generator=g, dtype=dtype) for n in (3, 1, 2)]
        return nn.utils.rnn.pack_sequence(xs, enforce_sorted=False)
    cases = [
        ("1layer", {}, seq),
        ("T1", {}, lambda: seq()[:1]),
        ("2layer-bidir", dict(num_layers=2, bidirectional=True), seq),
        ("packed-bidir", dict(bidirectional=True), packed),
        ("batch_first-nobias", dict(batch_first=True, bias=False), lambda: seq(True)),
        ("unbatched", {}, lambda: seq()[:, 0]),
    ]
    if mode == "lstm":
        cases += [("proj", dict(proj_size=2, num_layers=2), seq),
                  ("proj-packed", dict(proj_size=2), packed)]
    return cases


def _with_hx(mod, x, mode, bidir_layers):
    g = torch.Generator().manual_seed(4)
    dt = x.data.dtype
    Bx = B
    K = mod.proj_size if getattr(mod, "proj_size", 0) else H
    h = torch.randn(bidir_layers, Bx, K, generator=g, dtype=dt, requires_grad=True)
    if mode == "lstm":
        c = torch.randn(bidir_layers, Bx, H, generator=g, dtype=dt, requires_grad=True)
        return (h, c), [h, c]
    return h, [h]


def run_cases(backend, dtype=torch.float32):
    import fastcells
    res = {}
    for mode, (layer_name, cell_name, extra) in MODES.items():
        for name, kw, make in _layer_cases(mode, dtype):
            torch.manual_seed(0)
            mod = getattr(fastcells, layer_name)(I, H, **extra, **kw, backend=backend).to(dtype)
            x = make()
            if isinstance(x, nn.utils.rnn.PackedSequence):
                x = nn.utils.rnn.PackedSequence(x.data.requires_grad_(), x.batch_sizes,
                                                x.sorted_indices, x.unsorted_indices)
                leaves = [x.data]
            else:
                x.requires_grad_()
                leaves = [x]
            for with_hx in (False, True):
                if with_hx and name == "unbatched":
                    continue
                hx, hleaves = (None, [])
                if with_hx:
                    hx, hleaves = _with_hx(mod, x, mode,
                                           mod.num_layers * (2 if mod.bidirectional else 1))
                out = mod(x, hx)
                outs = _flat(out)
                params = [p for p in mod.parameters()]
                gs = torch.autograd.grad(_loss(outs), leaves + hleaves + params, allow_unused=True)
                res[f"{mode}/{name}/hx{int(with_hx)}"] = [o.detach() for o in outs] + list(gs)
        if backend == "triton" and mode != "rnn_relu":
            with _env(FASTCELLS_DIRECTIONS="fused"):
                torch.manual_seed(0)
                mod = getattr(fastcells, layer_name)(I, H, **extra, num_layers=2,
                                                     bidirectional=True, backend=backend).to(dtype)
                x = torch.randn(T, B, I, dtype=dtype, generator=torch.Generator().manual_seed(2),
                                requires_grad=True)
                outs = _flat(mod(x))
                gs = torch.autograd.grad(_loss(outs), [x, *mod.parameters()])
                res[f"{mode}/fused-directions"] = [o.detach() for o in outs] + list(gs)
        # a double backward (create_graph: the reference recomputation)
        torch.manual_seed(0)
        mod = getattr(fastcells, layer_name)(I, H, **extra, backend=backend).to(dtype)
        x = torch.randn(T, B, I, dtype=dtype, generator=torch.Generator().manual_seed(2),
                        requires_grad=True)
        (gx,) = torch.autograd.grad(_loss(_flat(mod(x))), [x], create_graph=True)
        gg = torch.autograd.grad((gx * gx).sum(), [x, *mod.parameters()])
        res[f"{mode}/double-backward"] = [gx.detach(), *gg]
        # torch.func: grad of the parameters, and a vmap over the batch
        params = {k: v.detach() for k, v in mod.named_parameters()}

        def f(p, x):
            return _loss(_flat(torch.func.functional_call(mod, p, (x,))))
        g = torch.func.grad(f)(params, x.detach())
        res[f"{mode}/func-grad"] = [g[k] for k in sorted(g)]
        vg = torch.func.vmap(torch.func.grad(f, argnums=1), in_dims=(None, 1))(
            params, x.detach()[:, :, None])
        res[f"{mode}/vmap-grad"] = [vg]
        # cells
        for bias in (True, False):
            torch.manual_seed(0)
            cell = getattr(fastcells, cell_name)(I, H, bias=bias, **extra,
                                                 backend=backend).to(dtype)
            g = torch.Generator().manual_seed(5)
            x = torch.randn(B, I, generator=g, dtype=dtype, requires_grad=True)
            h = torch.randn(B, H, generator=g, dtype=dtype, requires_grad=True)
            hx, hl = h, [h]
            if mode == "lstm":
                c = torch.randn(B, H, generator=g, dtype=dtype, requires_grad=True)
                hx, hl = (h, c), [h, c]
            outs = _flat(cell(x, hx))
            # two steps: the second reads the first's output
            outs2 = _flat(cell(x, tuple(outs) if mode == "lstm" else outs[0]))
            gs = torch.autograd.grad(_loss(outs2), [x, *hl, *cell.parameters()],
                                     allow_unused=True)
            res[f"{mode}/cell/bias{int(bias)}"] = [o.detach() for o in outs + outs2] + list(gs)
            with torch.no_grad():
                res[f"{mode}/cell-no_grad/bias{int(bias)}"] = _flat(cell(x, hx))
    return res


def collect():
    out = {}
    for backend in ("triton", "reference"):
        for dtype in (torch.float32, torch.float64):
            for k, v in run_cases(backend, dtype).items():
                out[f"{backend}/{str(dtype)[6:]}/{k}"] = [None if t is None else t.clone()
                                                          for t in v]
    return out


def compare(base, now):
    bad = []
    for k in sorted(set(base) | set(now)):
        if k not in base or k not in now:
            bad.append(f"{k}: only in {'base' if k in base else 'now'}")
            continue
        a, b = base[k], now[k]
        if len(a) != len(b):
            bad.append(f"{k}: {len(a)} tensors vs {len(b)}")
            continue
        for i, (s, t) in enumerate(zip(a, b)):
            if (s is None) != (t is None):
                bad.append(f"{k}[{i}]: None vs tensor")
            elif s is not None and (s.shape != t.shape or s.dtype != t.dtype):
                bad.append(f"{k}[{i}]: {s.shape}/{s.dtype} vs {t.shape}/{t.dtype}")
            elif s is not None and not torch.equal(s.nan_to_num(), t.nan_to_num()):
                bad.append(f"{k}[{i}]: max |diff| {(s - t).abs().max().item():.3g}")
    return bad


def _fast_interpreter():
    """tests/interpreter_patching: the interpreter patches triton.language once per launch
    (semantics untouched, only repeated work skipped)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__))), "tests"))
        from interpreter_patching import install
        install()


def main(argv=None):
    p = argparse.ArgumentParser(prog="python bench/bitwise_check.py",
                                description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--save", help="write the tensors here")
    g.add_argument("--compare", help="compare with the tensors saved here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)   # one reduction order for the CPU GEMMs
    _fast_interpreter()
    now = collect()
    n = sum(len(v) for v in now.values())
    if args.save:
        torch.save(now, args.save)
        print(f"saved {len(now)} cases, {n} tensors to {args.save}")
        return 0
    bad = compare(torch.load(args.compare), now)
    print(f"{len(now)} cases, {n} tensors: " + ("bit-identical" if not bad else
                                                 f"{len(bad)} differ"))
    for line in bad:
        print("  " + line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
