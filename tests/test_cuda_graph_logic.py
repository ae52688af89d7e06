"""The CUDA-graph replay path's buffer logic (static copies in, clones out, reuse across calls
with new data), exercised on any device by standing in for capture and replay: replay re-runs
the recorded steps on the static buffers, exactly what a captured graph does."""
import pytest
import torch

from fastcells.kernels import cuda_graph
from rnn_utils import KINDS, flat, grads, loss_of, twins
from tolerances import assert_close


@pytest.fixture
def fake_graphs(monkeypatch):
    captured = []

    def capture(self, steps):
        self.steps = steps
        captured.append(self)

    monkeypatch.setattr(cuda_graph, "enabled", lambda device: True)
    monkeypatch.setattr(cuda_graph._Graphed, "_capture", capture)
    monkeypatch.setattr(cuda_graph._Graphed, "replay", lambda self: self.steps(self.bufs))
    monkeypatch.setattr(cuda_graph, "_cache", type(cuda_graph._cache)())
    return captured


@pytest.mark.parametrize("kind", list(KINDS))
def test_graph_path_matches_torch_across_calls(kind, fake_graphs, device):
    ref, fast = twins(KINDS, kind, 4, 6, backend="triton", device=device, num_layers=2)
    for call in range(3):  # new data each call through the same cached graphs
        x = torch.randn(5, 3, 4, dtype=torch.float64, device=device, requires_grad=True)
        out_ref, out_fast = flat(ref(x)), flat(fast(x))
        for a, b in zip(out_fast, out_ref):
            assert_close(a, b, torch.float64)
        g_ref = grads(loss_of(out_ref, seed=call), [x] + list(ref.parameters()))
        g_fast = grads(loss_of(out_fast, seed=call), [x] + list(fast.parameters()))
        for a, b in zip(g_fast, g_ref):
            assert_close(a, b, torch.float64)
    # One forward and one backward graph, shared by both layers (the input projection is
    # hoisted, so a step loop's shapes do not depend on the input size) and reused by calls 1, 2.
    assert len(fake_graphs) == 2


def test_outputs_survive_the_next_replay(fake_graphs, device):
    """Forward results are cloned out of the static buffers: a second call must not change
    what the first returned (the autograd graph of the first call still needs it)."""
    _, fast = twins(KINDS, "lstm", 4, 6, backend="triton", device=device)
    x1 = torch.randn(5, 3, 4, dtype=torch.float64, device=device)
    y1, _ = fast(x1)
    kept = y1.clone()
    fast(torch.randn(5, 3, 4, dtype=torch.float64, device=device))
    torch.testing.assert_close(y1, kept, rtol=0, atol=0)


def test_threads_never_share_graph_buffers(fake_graphs, device, monkeypatch):
    """Two same-shape modules called from two threads (an inference server) each get their own
    static buffers, so one thread's replay cannot overwrite the other's inputs or outputs."""
    import threading
    if device == "cpu":  # the interpreter is not thread-safe: one launch at a time (calls still
        from triton.runtime.interpreter import InterpretedFunction  # interleave between launches)
        lock, run = threading.Lock(), InterpretedFunction.run

        def locked(self, *a, **k):
            with lock:
                return run(self, *a, **k)
        monkeypatch.setattr(InterpretedFunction, "run", locked)
    _, fast = twins(KINDS, "gru", 4, 6, backend="triton", device=device)
    xs = [torch.randn(5, 3, 4, dtype=torch.float64, device=device) for _ in range(2)]
    with torch.no_grad():
        want = [fast(x)[0] for x in xs]
    n_before = len(fake_graphs)
    got = [None, None]
    barrier = threading.Barrier(2)

    def work(i):
        barrier.wait()
        with torch.no_grad():
            for _ in range(3):
                got[i] = fast(xs[i])[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert len(fake_graphs) == n_before + 2  # one forward graph per thread


def test_cache_evicts_least_recently_used(fake_graphs, device, monkeypatch):
    """At most MAX_GRAPHS cached; the least recently used goes; an evicted shape recaptures."""
    I, H, B = 4, 5, 3
    monkeypatch.setattr(cuda_graph, "MAX_GRAPHS", 2)
    ref, fast = twins(KINDS, "rnn_tanh", I, H, backend="triton", device=device)

    def call(steps):
        x = torch.randn(steps, B, I, dtype=torch.float64, device=device)
        with torch.no_grad():
            assert_close(fast(x)[0], ref(x)[0], torch.float64)
        return [k[4] for k in cuda_graph._cache]   # the cached sequence lengths, LRU first

    assert call(2) == [2]
    assert call(3) == [2, 3]
    assert call(2) == [3, 2]          # a hit moves to the end
    assert call(4) == [2, 4]          # 3, least recently used, evicted
    assert len(fake_graphs) == 3
    assert call(3) == [4, 3]          # captured again, and still right
    assert len(fake_graphs) == 4
    cuda_graph.clear()
    assert not cuda_graph._cache
