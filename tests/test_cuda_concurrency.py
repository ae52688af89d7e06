"""Same-shape layers called at once from two threads and on two CUDA streams, through real CUDA
graphs: every call gets what it gets alone (an inference server calls one model from several
threads).  A graph is keyed on the thread and stream that run it (``kernels.cuda_graph``): a
forward's buffers are its calling thread's; a backward runs on autograd's device thread, one
task at a time in stream order, so the threads share its buffers but never at once; captures
take turns.  CUDA only: ``test_cuda_graph_logic.py`` checks the same buffer logic on any device
by standing in for capture and replay."""
import threading

import pytest
import torch

import fastcells
from fastcells.kernels import cuda_graph

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="real CUDA graphs, threads and streams need a GPU")

T, B, I, H = 12, 16, 32, 64
CALLS = 6


@pytest.fixture(autouse=True)
def fresh_graphs():
    cuda_graph.clear()   # every thread and stream captures its own graphs in the test
    yield
    cuda_graph.clear()


def _net(kind):
    torch.manual_seed(0)
    return getattr(fastcells, kind)(I, H, backend="triton").cuda()


def _inputs(n):
    g = torch.Generator(device="cuda").manual_seed(1)
    return [torch.randn(T, B, I, device="cuda", generator=g) for _ in range(n)]


def _call(net, x):
    """The output and the gradients of a loss on it (torch.autograd.grad: no .grad shared
    between threads)."""
    x = x.clone().requires_grad_()
    y, _ = net(x)
    grads = torch.autograd.grad(y.square().sum(), [x, *net.parameters()])
    return [y.detach(), *grads]


def _check(got, want):
    for results, expected in zip(got, want):
        assert len(results) == CALLS
        for res in results:
            for a, b in zip(res, expected):
                torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_two_threads_same_shape(kind):
    net = _net(kind)
    xs = _inputs(2)
    want = [_call(net, x) for x in xs]
    got, errors = [[], []], []
    barrier = threading.Barrier(2)

    def work(i):
        try:
            barrier.wait()
            for _ in range(CALLS):
                got[i].append(_call(net, xs[i]))
            torch.cuda.current_stream().synchronize()
        except BaseException as e:   # reported below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    torch.cuda.synchronize()
    _check(got, want)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_two_streams_same_shape(kind):
    net = _net(kind)
    xs = _inputs(2)
    want = [_call(net, x) for x in xs]
    streams = [torch.cuda.Stream() for _ in range(2)]
    for s in streams:
        s.wait_stream(torch.cuda.current_stream())
    got = [[], []]
    for _ in range(CALLS):   # interleaved: each stream's calls queue beside the other's
        for i, s in enumerate(streams):
            with torch.cuda.stream(s):
                got[i].append(_call(net, xs[i]))
    torch.cuda.synchronize()
    _check(got, want)
