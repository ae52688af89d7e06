"""fastcells.diagnostics.hidden_grad_norms against hand-computable cases and a restart oracle."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fastcells
from fastcells.diagnostics import GradientFlow, hidden_grad_norms, vanishing_factor

from tolerances import assert_close

F64 = torch.float64


def _sum_last(output, hidden):
    return output[-1].sum()


def _one_unit_rnn(cls, w, nonlinearity, **kw):
    """A 1-unit RNN with input weight 1, recurrent weight w, no bias effect."""
    m = cls(1, 1, nonlinearity=nonlinearity, **kw).double()
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.fill_(1.0 if name.startswith("weight_ih") else w if name.startswith("weight_hh")
                    else 0.0)
    return m


# ------------------------------------------------------------------------ hand-computable cases
@pytest.mark.parametrize("w", [0.5, 2.0])
@pytest.mark.parametrize("cls", [nn.RNN, fastcells.RNN, nn.RNNCell, fastcells.RNNCell],
                         ids=lambda c: f"{c.__module__.split('.')[0]}.{c.__name__}")
def test_linear_regime_relu_rnn_is_a_power_of_w(cls, w):
    # Positive inputs keep a relu RNN with w > 0 in its linear regime: h_t = w h_{t-1} + x_t,
    # so for L = sum_b h_T[b], dL/dh_t = w^(T-t) exactly (per sample).
    T, B = 7, 3
    m = _one_unit_rnn(cls, w, "relu")
    x = torch.rand(T, B, 1, dtype=F64) + 0.1
    flow = hidden_grad_norms(m, x, _sum_last)
    expected = torch.tensor([abs(w) ** (T - t) for t in range(1, T + 1)], dtype=F64)
    assert isinstance(flow, GradientFlow)
    assert flow.norms.shape == (T, B) and flow.norms.dtype == F64
    assert_close(flow.norms, expected[:, None].expand(T, B))
    assert_close(flow.mean, expected)
    assert flow.vanishing_factor == pytest.approx(abs(w) ** -(T - 1), rel=1e-12)
    assert flow.at(1) == pytest.approx(abs(w) ** (T - 1), rel=1e-12)
    assert flow.at(-1) == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize("w", [0.9, -0.7, 1.5])
def test_tanh_rnn_matches_the_chain_rule_by_hand(w):
    # h_t = tanh(w h_{t-1} + x_t): dh_t/dh_{t-1} = w (1 - h_t^2), a product we compute here.
    T, B = 6, 4
    m = _one_unit_rnn(nn.RNN, w, "tanh")
    x = torch.randn(T, B, 1, dtype=F64)
    h, hs = torch.zeros(B, dtype=F64), []
    for t in range(T):
        h = torch.tanh(w * h + x[t, :, 0])
        hs.append(h)
    g, expected = torch.ones(B, dtype=F64), [None] * T
    for t in reversed(range(T)):
        expected[t] = g.abs()
        g = g * w * (1 - hs[t] ** 2)
    flow = hidden_grad_norms(m, x, _sum_last)
    assert_close(flow.norms, torch.stack(expected))


@pytest.mark.parametrize("cls", [nn.GRU, fastcells.GRU, nn.GRUCell, fastcells.GRUCell],
                         ids=lambda c: f"{c.__module__.split('.')[0]}.{c.__name__}")
def test_gru_with_a_constant_update_gate_decays_as_z_to_the_power(cls):
    # Zero weights but b_hz = b: the update gate z = sigmoid(b) everywhere and n ignores h, so
    # h' = (1 - z) n + z h and dL/dh_t = z^(T-t) dL/dh_T; with L = sum h_T, ||dL/dh_T|| = sqrt(H).
    T, B, H, b = 6, 2, 3, 1.3
    m = cls(2, H).double()
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        b_hh = m.bias_hh_l0 if hasattr(m, "bias_hh_l0") else m.bias_hh
        b_hh[H:2 * H] = b
        w_ih = m.weight_ih_l0 if hasattr(m, "weight_ih_l0") else m.weight_ih
        w_ih[2 * H:].fill_(0.5)   # n depends on x, so the state is not trivially 0
    z = torch.sigmoid(torch.tensor(b, dtype=F64))
    x = torch.randn(T, B, 2, dtype=F64)
    flow = hidden_grad_norms(m, x, _sum_last)
    expected = torch.stack([z ** (T - t) * math.sqrt(H) for t in range(1, T + 1)])
    assert_close(flow.norms, expected[:, None].expand(T, B))
    assert flow.vanishing_factor == pytest.approx(float(z) ** -(T - 1), rel=1e-12)


@pytest.mark.parametrize("cls", [nn.LSTM, fastcells.LSTM, nn.LSTMCell, fastcells.LSTMCell],
                         ids=lambda c: f"{c.__module__.split('.')[0]}.{c.__name__}")
def test_lstm_without_recurrent_weights_only_the_last_step_matters(cls):
    # W_hh = 0: h_t feeds nothing later (c_t carries the memory, not h_t), so dL/dh_t = 0 for
    # t < T, and for L = sum h_T the last norm is sqrt(H): the vanishing factor is infinite.
    T, B, H = 5, 3, 4
    torch.manual_seed(0)
    m = cls(3, H).double()
    with torch.no_grad():
        (m.weight_hh_l0 if hasattr(m, "weight_hh_l0") else m.weight_hh).zero_()
    flow = hidden_grad_norms(m, torch.randn(T, B, 3, dtype=F64), _sum_last)
    expected = torch.zeros(T, B, dtype=F64)
    expected[-1] = math.sqrt(H)
    assert_close(flow.norms, expected)
    assert flow.vanishing_factor == math.inf


def test_loss_that_ignores_the_states_gives_zero_and_nan_factor():
    m = nn.GRU(2, 3).double()
    flow = hidden_grad_norms(m, torch.randn(4, 2, 2, dtype=F64),
                             lambda out, h: out.sum() * 0 + torch.tensor(1.0, dtype=F64))
    assert_close(flow.norms, torch.zeros(4, 2, dtype=F64))
    assert math.isnan(flow.vanishing_factor)
    const = hidden_grad_norms(m, torch.randn(4, 2, 2, dtype=F64),
                              lambda out, h: torch.tensor(2.0, dtype=F64))
    assert_close(const.norms, torch.zeros(4, 2, dtype=F64))
    assert const.loss == 2.0


def test_float64_measures_what_float32_flushes_to_zero():
    # w = 0.01 over 30 steps: dL/dh_1 = 1e-58, below float32's smallest number.
    T = 30
    m = _one_unit_rnn(nn.RNN, 0.01, "relu").float()
    x = torch.rand(T, 2, 1) + 0.1
    assert hidden_grad_norms(m, x, _sum_last).vanishing_factor == math.inf
    w32 = float(m.weight_hh_l0.detach())              # 0.01 rounded to float32
    flow = hidden_grad_norms(m, x, _sum_last, dtype=F64)
    assert flow.vanishing_factor == pytest.approx(w32 ** -(T - 1), rel=1e-9)
    assert vanishing_factor(m, x, _sum_last, dtype=F64) == pytest.approx(w32 ** -(T - 1), rel=1e-9)


def test_loss_fn_sees_the_input_dtype_while_the_recurrence_runs_in_float64():
    torch.manual_seed(8)
    rnn, head = fastcells.GRU(3, 5), nn.Linear(5, 1)          # float32, as a user has them
    x, y = torch.randn(40, 4, 3), torch.randn(4)
    seen = []

    def loss_fn(output, hidden):
        seen.append((output.dtype, hidden.dtype))
        return F.mse_loss(head(output[-1]).squeeze(-1), y)    # float32 head: no cast needed

    flow = hidden_grad_norms(rnn, x, loss_fn, dtype=F64)
    assert seen == [(torch.float32, torch.float32)]
    rnn64, head64 = fastcells.GRU(3, 5).double(), nn.Linear(5, 1).double()
    rnn64.load_state_dict(rnn.state_dict())
    head64.load_state_dict(head.state_dict())
    ref = hidden_grad_norms(rnn64, x.double(),
                            lambda o, h: F.mse_loss(head64(o[-1]).squeeze(-1), y.double()))
    # Only dL/dh_T is computed in float32; the rest of the backward pass is float64.
    assert_close(flow.norms, ref.norms, rtol=1e-5, atol=0)


# ------------------------------------------------------------------------------ restart oracle
def _oracle(m, x, loss_fn, hx=None):
    """||dL/dh_t|| by restarting the module's own forward at every t from a leaf h_t."""
    lstm = isinstance(m, nn.LSTM)
    T = x.shape[0]
    norms = []
    for t in range(1, T + 1):
        out_p, state = m(x[:t], hx)
        h_t = state[0] if lstm else state
        leaf = h_t[-1].detach().clone().requires_grad_(True)
        h_new = torch.cat([h_t[:-1].detach(), leaf[None]])
        state = (h_new, state[1].detach()) if lstm else h_new
        pieces = [out_p[:t - 1].detach(), leaf[None]]
        if t < T:
            out_s, state = m(x[t:], state)
            pieces.append(out_s)
        loss = loss_fn(torch.cat(pieces), state)
        (g,) = torch.autograd.grad(loss, leaf)
        norms.append(g.norm(dim=-1))
    return torch.stack(norms)


def _weighted_loss(output, hidden):
    h_n = hidden[0] if isinstance(hidden, tuple) else hidden
    gen = torch.Generator().manual_seed(7)
    r = torch.randn(output.shape, generator=gen, dtype=output.dtype).to(output.device)
    s = torch.randn(h_n.shape, generator=gen, dtype=output.dtype).to(output.device)
    loss = (output * r).sum() + (h_n * s).sum()
    if isinstance(hidden, tuple):
        loss = loss + hidden[1].pow(2).sum()
    return loss


NETS = [
    pytest.param(nn.LSTM, {}, id="torch.LSTM"),
    pytest.param(fastcells.LSTM, {}, id="fastcells.LSTM"),
    pytest.param(fastcells.LSTM, dict(num_layers=2), id="fastcells.LSTM-L2"),
    pytest.param(nn.LSTM, dict(proj_size=3), id="torch.LSTM-proj3"),
    pytest.param(fastcells.GRU, {}, id="fastcells.GRU"),
    pytest.param(nn.GRU, dict(num_layers=3, bias=False), id="torch.GRU-L3-nobias"),
    pytest.param(fastcells.RNN, {}, id="fastcells.RNN-tanh"),
    pytest.param(nn.RNN, dict(nonlinearity="relu", num_layers=2), id="torch.RNN-relu-L2"),
]


@pytest.mark.parametrize("cls,kw", NETS)
def test_matches_the_restart_oracle(cls, kw):
    T, B, I, H = 6, 3, 4, 5
    torch.manual_seed(1)
    m = cls(I, H, **kw).double()
    x = torch.randn(T, B, I, dtype=F64)
    flow = hidden_grad_norms(m, x, _weighted_loss)
    assert flow.norms.shape == (T, B)
    assert_close(flow.norms, _oracle(m, x, _weighted_loss))
    assert flow.loss == pytest.approx(_weighted_loss(*m(x)).item(), rel=1e-12)


@pytest.mark.parametrize("lstm", [False, True])
def test_initial_state_and_lower_layer(lstm):
    T, B, I, H, L = 5, 2, 3, 4, 2
    torch.manual_seed(2)
    m = (nn.LSTM if lstm else nn.RNN)(I, H, num_layers=L).double()
    x = torch.randn(T, B, I, dtype=F64)
    h0 = torch.randn(L, B, H, dtype=F64)
    hx = (h0, torch.randn(L, B, H, dtype=F64)) if lstm else h0
    flow = hidden_grad_norms(m, x, _weighted_loss, hx)
    assert_close(flow.norms, _oracle(m, x, _weighted_loss, hx))
    assert flow.loss == pytest.approx(_weighted_loss(*m(x, hx)).item(), rel=1e-12)
    # The lower layer: its states differ from the top one's, and reach the loss through it.
    low = hidden_grad_norms(m, x, _weighted_loss, hx, layer=0)
    assert low.norms.shape == (T, B) and not torch.allclose(low.norms, flow.norms)
    assert_close(hidden_grad_norms(m, x, _weighted_loss, hx, layer=-2).norms, low.norms)


def test_cells_match_the_loop_over_the_cell():
    T, B, I, H = 5, 3, 2, 4
    torch.manual_seed(3)
    for cls in (nn.LSTMCell, fastcells.GRUCell, fastcells.RNNCell):
        m = cls(I, H).double()
        x = torch.randn(T, B, I, dtype=F64)
        norms = []
        for t in range(T):
            state = None
            for s in range(t + 1):
                state = m(x[s], state)
            h = state[0] if isinstance(state, tuple) else state
            leaf = h.detach().clone().requires_grad_(True)
            state = (leaf, state[1].detach()) if isinstance(state, tuple) else leaf
            for s in range(t + 1, T):
                state = m(x[s], state)
            h_T = state[0] if isinstance(state, tuple) else state
            (g,) = torch.autograd.grad((h_T ** 2).sum(), leaf)
            norms.append(g.norm(dim=-1))
        loss = lambda out, hidden: (out[-1] ** 2).sum()  # noqa: E731
        assert_close(hidden_grad_norms(m, x, loss).norms, torch.stack(norms))


def test_batch_first_equals_time_major():
    torch.manual_seed(4)
    tm = fastcells.GRU(3, 5).double()
    bf = fastcells.GRU(3, 5, batch_first=True).double()
    bf.load_state_dict(tm.state_dict())
    x = torch.randn(6, 2, 3, dtype=F64)
    a = hidden_grad_norms(tm, x, lambda out, h: (out[-1] ** 2).sum() + out[2].sum())
    b = hidden_grad_norms(bf, x.transpose(0, 1),
                          lambda out, h: (out[:, -1] ** 2).sum() + out[:, 2].sum())
    assert_close(b.norms, a.norms)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_fastcells_backends_agree_with_native(backend, device):
    T, B, I, H = 5, 3, 3, 7
    torch.manual_seed(5)
    x = torch.randn(T, B, I, dtype=F64, device=device)
    for cls in (fastcells.LSTM, fastcells.GRU):
        native = cls(I, H, backend="native").double().to(device)
        other = cls(I, H, backend=backend).double().to(device)
        other.load_state_dict(native.state_dict())
        assert_close(hidden_grad_norms(other, x, _weighted_loss).norms,
                     hidden_grad_norms(native, x, _weighted_loss).norms)


def test_leaves_grads_and_mode_alone_and_works_frozen_and_under_no_grad():
    torch.manual_seed(6)
    m = fastcells.LSTM(3, 4)
    x = torch.randn(5, 2, 3)
    ref = hidden_grad_norms(m, x, _weighted_loss).norms
    assert all(p.grad is None for p in m.parameters())
    for p in m.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        assert_close(hidden_grad_norms(m, x, _weighted_loss).norms, ref)
    assert m.training


# ------------------------------------------------------------------------------------- errors
def test_rejects_other_modules_with_a_clear_error():
    with pytest.raises(TypeError, match="expected a torch.nn.RNN, LSTM or GRU.*got Linear"):
        hidden_grad_norms(nn.Linear(2, 2), torch.randn(3, 2, 2), _sum_last)
    with pytest.raises(ValueError, match="bidirectional"):
        hidden_grad_norms(nn.GRU(2, 3, bidirectional=True), torch.randn(3, 2, 2), _sum_last)


def test_rejects_bad_inputs():
    m = nn.RNN(2, 3)
    with pytest.raises(ValueError, match=r"batched 3-D input \(T, B, features\), got 2-D"):
        hidden_grad_norms(m, torch.randn(3, 2), _sum_last)
    with pytest.raises(ValueError, match=r"\(B, T, features\)"):
        hidden_grad_norms(nn.RNN(2, 3, batch_first=True), torch.randn(3, 2), _sum_last)
    packed = pack_padded_sequence(torch.randn(3, 2, 2), torch.tensor([3, 2]))
    with pytest.raises(TypeError, match="PackedSequence"):
        hidden_grad_norms(m, packed, _sum_last)
    with pytest.raises(ValueError, match="no time steps"):
        hidden_grad_norms(m, torch.randn(0, 2, 2), _sum_last)
    with pytest.raises(ValueError, match="scalar"):
        hidden_grad_norms(m, torch.randn(3, 2, 2), lambda out, h: out[-1])
    with pytest.raises(ValueError, match="layer 1 out of range"):
        hidden_grad_norms(m, torch.randn(3, 2, 2), _sum_last, layer=1)
