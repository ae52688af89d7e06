"""One weight frozen at a time: with only weight_ih, only weight_hh, only the biases or only
weight_hr not requiring grad, every other gradient (input, initial state, the other weights)
matches torch.nn's, and the frozen ones get none.  A backward that ties one weight's gradient
to another's ``requires_grad`` (dW_hh computed only when W_ih needs one) fails here."""
import pytest
import torch

from rnn_utils import CELLS, KINDS, flat, loss_of, twins
from tolerances import assert_close

T, B, I, H, P = 3, 3, 4, 5, 2
GROUPS = {"weight_ih": ("weight_ih",), "weight_hh": ("weight_hh",),
          "biases": ("bias_ih", "bias_hh"), "weight_hr": ("weight_hr",)}
HOW = ["default", "env-triton", "reference"]


def _freeze(module, group):
    frozen = [n for n, p in module.named_parameters() if n.startswith(GROUPS[group])]
    assert frozen, group
    for n in frozen:
        module.get_parameter(n).requires_grad_(False)
    return frozen


def _check(ref, fast, group, make_inputs):
    frozen = _freeze(ref, group)
    assert _freeze(fast, group) == frozen
    got = []
    for module in (ref, fast):
        inputs, hx, leaves = make_inputs()
        with torch.backends.cudnn.flags(enabled=False):
            out = module(inputs, hx)
        params = [p for p in module.parameters() if p.requires_grad]
        got.append(torch.autograd.grad(loss_of(flat(out)), leaves + params))
        assert all(module.get_parameter(n).grad is None for n in frozen)
    assert len(got[0]) == len(got[1])
    for a, b in zip(got[1], got[0]):
        assert_close(a, b, torch.float64)


def _backend(how, monkeypatch):
    if how == "env-triton":
        monkeypatch.setenv("FASTCELLS_BACKEND", "triton")
    return "reference" if how == "reference" else None


LAYER_CASES = [(kind, opt, group) for kind in KINDS for opt in ("1layer", "2layer-bidir")
               for group in ("weight_ih", "weight_hh", "biases")]
LAYER_CASES += [("lstm", "proj", group) for group in GROUPS]
OPTIONS = {"1layer": {}, "2layer-bidir": dict(num_layers=2, bidirectional=True),
           "proj": dict(num_layers=2, proj_size=P)}


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("kind,opt,group", LAYER_CASES)
def test_layer_with_one_weight_frozen(kind, opt, group, how, monkeypatch, device):
    ref, fast = twins(KINDS, kind, I, H, backend=_backend(how, monkeypatch), device=device,
                      **OPTIONS[opt])
    D, L = 1 + ref.bidirectional, ref.num_layers
    K = ref.proj_size or H

    def make_inputs():
        g = torch.Generator().manual_seed(3)
        rand = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(device)  # noqa: E731
        x = rand(T, B, I).requires_grad_()
        h0 = rand(L * D, B, K).requires_grad_()
        if kind != "lstm":
            return x, h0, [x, h0]
        c0 = rand(L * D, B, H).requires_grad_()
        return x, (h0, c0), [x, h0, c0]
    _check(ref, fast, group, make_inputs)


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("group", ["weight_ih", "weight_hh", "biases"])
@pytest.mark.parametrize("kind", list(CELLS))
def test_cell_with_one_weight_frozen(kind, group, how, monkeypatch, device):
    ref, fast = twins(CELLS, kind, I, H, backend=_backend(how, monkeypatch), device=device)

    def make_inputs():
        g = torch.Generator().manual_seed(4)
        rand = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(device)  # noqa: E731
        x, h = rand(B, I).requires_grad_(), rand(B, H).requires_grad_()
        if kind != "lstm":
            return x, h, [x, h]
        c = rand(B, H).requires_grad_()
        return x, (h, c), [x, h, c]
    _check(ref, fast, group, make_inputs)
