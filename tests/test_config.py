"""kernels.config: every switch is read by one mechanism, at every call, with one kind of error."""
import pytest

from fastcells import backend
from fastcells.kernels import config


@pytest.mark.parametrize("switch", config.SWITCHES, ids=lambda s: s.var)
def test_each_switch_defaults_parses_and_refuses(switch, monkeypatch):
    monkeypatch.delenv(switch.var, raising=False)
    assert config.read(switch) == switch.default
    for value in switch.choices:
        monkeypatch.setenv(switch.var, f" {value.upper()} ")
        assert config.read(switch) == value
    monkeypatch.setenv(switch.var, "")
    assert config.read(switch) == switch.default
    monkeypatch.setenv(switch.var, "bogus")
    with pytest.raises(ValueError, match=f"{switch.var}: unknown .* 'bogus'; expected one of"):
        config.read(switch)


def test_readers(monkeypatch):
    monkeypatch.setenv("FASTCELLS_CUDA_GRAPHS", "0")
    monkeypatch.setenv("FASTCELLS_DIRECTIONS", "fused")
    monkeypatch.setenv("FASTCELLS_BACKEND", "reference")
    assert (config.cuda_graphs(), config.fused_directions(), backend.default_backend()) == (
        False, True, "reference")
    monkeypatch.setenv("FASTCELLS_RECURRENCE", "step")
    assert config.schedule() == "step"
    monkeypatch.setenv("FASTCELLS_RECURRENCE", "resident")   # the resident kernels are gone
    with pytest.raises(ValueError, match="FASTCELLS_RECURRENCE"):
        config.schedule()
