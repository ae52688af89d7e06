"""fastcells.route: the route of a call on the kernels is decided once, from torch's state, and
a backward's once where it starts; fastcells.cells: a cell is one value the code asks."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD

import fastcells
from fastcells import cells, functional
from fastcells import route as routes


def test_forward_route_follows_torch_state():
    assert routes.decide() == routes.EAGER
    with torch.no_grad():
        assert routes.decide() == routes.INFERENCE
    seen = []

    def f(x):
        seen.append(routes.decide())
        return x.sum()
    torch.func.grad(f)(torch.ones(2))
    with fwAD.dual_level():
        seen.append(routes.decide())
    assert seen == [routes.TRANSFORM, routes.FORWARD_AD]


def test_backward_route_follows_torch_state():
    dy = torch.ones(2)
    with torch.no_grad():
        assert routes.backward(dy, None) == routes.PLAIN
    assert routes.backward(dy, None) == routes.DIFFERENTIABLE   # create_graph: grad mode on


def test_cells_are_values_with_torch_names():
    assert functional.MODES == ("lstm", "gru", "rnn_tanh", "rnn_relu")
    for name, cell in cells.CELLS.items():
        assert cells.get(name) is cell and cells.get(cell) is cell
        assert cells.BY_TORCH_MODE[cell.torch_mode] is cell
        assert cell.has_cell == (name == "lstm") and cell.gates == {"lstm": 4, "gru": 3}.get(name, 1)
    with pytest.raises(ValueError, match="unknown recurrent mode 'lstm2'; expected one of lstm, "
                                         "gru, rnn_tanh, rnn_relu"):
        functional.rnn("lstm2", torch.zeros(1, 1, 1), torch.zeros(1, 1, 1), [])


@pytest.mark.parametrize("module,name", [
    (torch.nn.LSTM(2, 3), "lstm"), (torch.nn.GRU(2, 3), "gru"), (torch.nn.RNN(2, 3), "rnn_tanh"),
    (fastcells.RNN(2, 3, nonlinearity="relu"), "rnn_relu"), (torch.nn.LSTMCell(2, 3), "lstm"),
    (fastcells.GRUCell(2, 3), "gru"), (torch.nn.RNNCell(2, 3, nonlinearity="relu"), "rnn_relu")])
def test_cell_of_a_module(module, name):
    assert cells.of_module(module) is cells.CELLS[name]
    assert cells.of_module(torch.nn.Linear(2, 3)) is None
