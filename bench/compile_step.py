"""A compiled training step on the default backend, against torch.nn's eager and compiled ones.

The model is a small word-level language model (Embedding, 2-layer LSTM with dropout, Linear
decoder); a step is forward, cross-entropy, backward, ``clip_grad_norm_`` and SGD.  Four ways:

* ``torch.nn eager``: torch's modules and ``torch.nn.utils.clip_grad_norm_``;
* ``torch.nn compiled``: the forward+loss and the clip under ``torch.compile`` (Dynamo
  graph-breaks at torch's LSTM, which runs eagerly);
* ``fastcells eager``: the same model after ``fastcells.convert``, no ``backend=``;
* ``fastcells compiled``: that model's forward+loss and ``fastcells.clip_grad_norm_`` under
  ``torch.compile(fullgraph=True)`` (on CPU the default backend compiles the reference math;
  on CUDA the kernels' custom ops).

Reported per way: the cold first step (compilation included) and the median step time after
warm-up.  Run: ``python bench/compile_step.py [--json PATH] [--device cpu|cuda]``.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

V, I, H, T, B = 1000, 64, 128, 35, 20


class LM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, I)
        self.rnn = nn.LSTM(I, H, num_layers=2, dropout=0.2)
        self.out = nn.Linear(H, V)

    def forward(self, tokens):
        return self.out(self.rnn(self.emb(tokens))[0])


def loss_fn(model, tokens, target):
    return nn.functional.cross_entropy(model(tokens).flatten(0, 1), target.flatten())


def way(name, device):
    """(model, forward+loss, clip) for one of the four ways."""
    import fastcells
    torch.manual_seed(0)
    model = LM().to(device)
    if name.startswith("fastcells"):
        model = fastcells.convert(model)

        def clip(m):
            return fastcells.clip_grad_norm_(m.parameters(), 0.25)
    else:
        def clip(m):
            return torch.nn.utils.clip_grad_norm_(m.parameters(), 0.25)
    fwd = loss_fn
    if name.endswith("compiled"):
        full = name.startswith("fastcells")
        fwd = torch.compile(loss_fn, fullgraph=full)
        clip = torch.compile(clip, fullgraph=full)
    return model, fwd, clip


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_way(name, device, steps):
    torch._dynamo.reset()
    model, fwd, clip = way(name, device)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    g = torch.Generator(device="cpu").manual_seed(1)
    batches = [(torch.randint(0, V, (T, B), generator=g).to(device),
                torch.randint(0, V, (T, B), generator=g).to(device)) for _ in range(4)]
    times = []
    for i in range(steps + 1):
        tokens, target = batches[i % len(batches)]
        sync(device)
        t0 = time.perf_counter()
        loss = fwd(model, tokens, target)
        loss.backward()
        clip(model)
        opt.step()
        opt.zero_grad()
        sync(device)
        times.append(time.perf_counter() - t0)
    return {"way": name, "cold_s": times[0], "median_ms": 1e3 * statistics.median(times[2:]),
            "steps": steps}


def commit():
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: torch's)")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.pop("FASTCELLS_BACKEND", None)   # the default resolution, as users call it
    rows = []
    for name in ("torch.nn eager", "fastcells eager", "torch.nn compiled", "fastcells compiled"):
        rows.append(time_way(name, args.device, args.steps))
        r = rows[-1]
        print(f"{name:20s} cold {r['cold_s']:7.2f} s   step {r['median_ms']:8.2f} ms", flush=True)
    base = rows[0]["median_ms"]
    for r in rows:
        r["ratio_to_torch_nn_eager"] = r["median_ms"] / base
    meta = {"device": torch.cuda.get_device_name() if args.device == "cuda"
            else platform.processor() or platform.machine(),
            "torch": torch.__version__, "commit": commit(), "threads": torch.get_num_threads(),
            "shape": dict(V=V, I=I, H=H, T=T, B=B, layers=2),
            "date": time.strftime("%Y-%m-%d"), "load_avg": os.getloadavg()}
    print("ratio = step time / torch.nn eager step time (below 1.00: faster)")
    for r in rows:
        print(f"  {r['way']:20s} {r['ratio_to_torch_nn_eager']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
