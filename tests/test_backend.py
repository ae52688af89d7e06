"""Backend choice: use_backend, FASTCELLS_BACKEND, backend=, and the triton-on-CPU error."""
import pytest
import torch

import fastcells
from fastcells import backend, reference


def test_auto_resolves_by_device():
    assert backend.resolve(None, torch.zeros(1)) == "native"
    assert backend.resolve("auto", torch.zeros(1)) == "native"
    if torch.cuda.is_available():
        assert backend.resolve("auto", torch.zeros(1, device="cuda")) == "triton"


def test_use_backend_nests_and_restores():
    assert backend.default_backend() == "auto"
    with fastcells.use_backend("reference"):
        assert backend.default_backend() == "reference"
        with fastcells.use_backend("native"):
            assert backend.default_backend() == "native"
        assert backend.default_backend() == "reference"
    assert backend.default_backend() == "auto"


def test_env_var_sets_default(monkeypatch):
    monkeypatch.setenv("FASTCELLS_BACKEND", "reference")
    assert backend.default_backend() == "reference"
    with fastcells.use_backend("native"):
        assert backend.default_backend() == "native"
    monkeypatch.setenv("FASTCELLS_BACKEND", "cudnn")
    with pytest.raises(ValueError, match="FASTCELLS_BACKEND"):
        backend.default_backend()


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="unknown fastcells backend 'fast'"):
        with fastcells.use_backend("fast"):
            pass
    with pytest.raises(ValueError, match="unknown fastcells backend"):
        fastcells.LSTM(3, 4, backend="fast")


def test_triton_on_cpu_without_interpreter_says_what_to_do(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    lstm = fastcells.LSTM(3, 4, backend="triton")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        lstm(torch.randn(2, 1, 3))


@pytest.mark.parametrize("how", ["context", "env", "keyword"])
def test_module_follows_the_chosen_backend(how, monkeypatch):
    calls = []
    real = reference.layer
    monkeypatch.setattr(reference, "layer", lambda *a, **k: calls.append(1) or real(*a, **k))
    lstm = fastcells.LSTM(3, 4, backend="reference" if how == "keyword" else None)
    x = torch.randn(2, 1, 3)
    if how == "context":
        with fastcells.use_backend("reference"):
            lstm(x)
    elif how == "env":
        monkeypatch.setenv("FASTCELLS_BACKEND", "reference")
        lstm(x)
    else:
        lstm(x)
    assert calls, "the reference path was not used"
    calls.clear()
    if how != "keyword":
        fastcells.LSTM(3, 4, backend="native")(x)  # explicit keyword wins over the default
        assert not calls


def test_native_is_torch_forward():
    torch.manual_seed(0)
    ref = torch.nn.GRU(3, 5, num_layers=2, bidirectional=True)
    fast = fastcells.GRU(3, 5, num_layers=2, bidirectional=True, backend="native")
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(4, 2, 3)
    torch.testing.assert_close(fast(x)[0], ref(x)[0], rtol=0, atol=0)


def test_repr_names_backend():
    assert "backend='triton'" in repr(fastcells.LSTM(3, 4, backend="triton"))
    assert repr(fastcells.LSTM(3, 4)) == "fastcells." + repr(torch.nn.LSTM(3, 4))


def test_use_backend_is_per_asyncio_task_and_per_thread(monkeypatch):
    """Two interleaved asyncio tasks on one thread, and a second thread, each see their own
    use_backend (a ContextVar, not thread-local state)."""
    import asyncio
    import threading
    monkeypatch.delenv(backend.ENV_VAR, raising=False)

    async def task(name, seen, started, other_started):
        with fastcells.use_backend(name):
            started.set()
            await other_started.wait()          # the other task has entered its own block
            seen.append((name, backend.default_backend()))

    async def main():
        seen, a, b = [], asyncio.Event(), asyncio.Event()
        await asyncio.gather(task("reference", seen, a, b), task("native", seen, b, a))
        return seen

    assert sorted(asyncio.run(main())) == [("native", "native"), ("reference", "reference")]
    got = []
    with fastcells.use_backend("reference"):
        t = threading.Thread(target=lambda: got.append(backend.default_backend()))
        t.start()
        t.join()
        assert backend.default_backend() == "reference"
    assert got == ["auto"]
