"""torch's own multi-layer RNN kernels as one opaque custom op, for ``torch.compile`` on CPU.

Dynamo cannot trace torch's CPU RNN kernels (it graph-breaks at torch.nn's RNN modules, and
tracing ``torch._VF.lstm`` fails in AOT autograd), and the reference math unrolled over every
step compiles slowly into a slow graph.  So under ``torch.compile`` the ``auto`` backend on CPU
runs torch's own kernels inside ``fastcells::native_rnn``: one node in the graph, no graph
break, the speed of torch.nn's eager call.

Its backward (``fastcells::native_rnn_backward``) recomputes the forward with autograd on and
differentiates it: one more forward per training step, and nothing saved but the inputs.  The
forward records the CPU generator's state when dropout draws masks, and the recomputation
replays it, so the masks are the forward's (and, since the op runs torch's own code at run time,
exactly those of torch.nn's eager call with the same seed).
"""
import contextlib
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import cells


def _run(mode, input, h0, c0, weights, has_biases, num_layers, dropout, train, bidirectional,
         batch_first, batch_sizes):
    """torch's forward: (output, h_n, c_n or None)."""
    fn = cells.CELLS[mode].native_layer
    hx = [h0, c0] if c0 is not None else h0
    if batch_sizes is None:
        res = fn(input, hx, weights, has_biases, num_layers, dropout, train, bidirectional,
                 batch_first)
    else:
        res = fn(input, batch_sizes, hx, weights, has_biases, num_layers, dropout, train,
                 bidirectional)
    return res[0], res[1], res[2] if c0 is not None else None


@contextlib.contextmanager
def _autograd_on():
    """Autograd inside a custom op's kernel, which the dispatcher runs with its autograd keys
    excluded: the recomputation below needs a graph of its own."""
    C = torch._C
    exclude = C._dispatch_tls_local_exclude_set()
    for key in (C.DispatchKey.AutogradFunctionality, C.DispatchKey.AutogradCPU,
                C.DispatchKey.AutogradOther, C.DispatchKey.ADInplaceOrView):
        exclude = exclude.remove(key)
    with C._ForceDispatchKeyGuard(C._dispatch_tls_local_include_set(), exclude), \
            torch.enable_grad():
        yield


def _draws(dropout, train, num_layers):
    return dropout > 0 and train and num_layers > 1


@torch.library.custom_op("fastcells::native_rnn", mutates_args=())
def native_rnn(mode: str, input: Tensor, h0: Tensor, c0: Optional[Tensor],
               weights: List[Tensor], has_biases: bool, num_layers: int, dropout: float,
               train: bool, bidirectional: bool, batch_first: bool,
               batch_sizes: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """[output, h_n, c_n (empty without c0), the CPU generator's state before the call (empty
    when no dropout mask is drawn)]."""
    rng = (torch.get_rng_state() if _draws(dropout, train, num_layers)
           else torch.zeros(0, dtype=torch.uint8))
    out, hn, cn = _run(mode, input, h0, c0, weights, has_biases, num_layers, dropout, train,
                       bidirectional, batch_first, batch_sizes)
    return out, hn, cn if cn is not None else input.new_empty(0), rng


@native_rnn.register_fake
def _(mode, input, h0, c0, weights, has_biases, num_layers, dropout, train, bidirectional,
      batch_first, batch_sizes):
    D = 2 if bidirectional else 1
    K = h0.shape[-1]
    out = input.new_empty(*input.shape[:-1], D * K)   # packed (N, .), or (T, B, .) / (B, T, .)
    rng_size = torch.get_rng_state().numel() if _draws(dropout, train, num_layers) else 0
    return (out, h0.new_empty(h0.shape),
            c0.new_empty(c0.shape) if c0 is not None else input.new_empty(0),
            torch.empty(rng_size, dtype=torch.uint8))


@torch.library.custom_op("fastcells::native_rnn_backward", mutates_args=())
def native_rnn_backward(mode: str, input: Tensor, h0: Tensor, c0: Optional[Tensor],
                        weights: List[Tensor], has_biases: bool, num_layers: int,
                        dropout: float, train: bool, bidirectional: bool, batch_first: bool,
                        batch_sizes: Optional[Tensor], rng: Tensor, d_out: Tensor,
                        d_hn: Tensor, d_cn: Optional[Tensor]) -> List[Tensor]:
    """[d_input, d_h0, d_c0 (empty without c0), *d_weights]: the forward recomputed (its
    dropout masks replayed from ``rng``) and differentiated."""
    leaves = [t.detach().requires_grad_() for t in (input, h0, *weights)]
    c = c0.detach().requires_grad_() if c0 is not None else None
    with _autograd_on(), torch.random.fork_rng(devices=[]):
        if rng.numel():
            torch.set_rng_state(rng)
        out, hn, cn = _run(mode, leaves[0], leaves[1], c, leaves[2:], has_biases, num_layers,
                           dropout, train, bidirectional, batch_first, batch_sizes)
        outs, gouts = [out, hn], [d_out, d_hn]
        if cn is not None and d_cn is not None:
            outs.append(cn)
            gouts.append(d_cn)
        srcs = leaves[:2] + ([c] if c is not None else []) + leaves[2:]
        got = torch.autograd.grad(outs, srcs, gouts, allow_unused=True)
    got = [torch.zeros_like(s) if g is None else g for g, s in zip(got, srcs)]
    if c is None:
        got.insert(2, input.new_empty(0))
    return got


@native_rnn_backward.register_fake
def _(mode, input, h0, c0, weights, has_biases, num_layers, dropout, train, bidirectional,
      batch_first, batch_sizes, rng, d_out, d_hn, d_cn):
    return [input.new_empty(input.shape), h0.new_empty(h0.shape),
            c0.new_empty(c0.shape) if c0 is not None else input.new_empty(0),
            *[w.new_empty(w.shape) for w in weights]]


def _setup_context(ctx, inputs, output):
    (ctx.mode, input, h0, c0, weights, ctx.has_biases, ctx.num_layers, ctx.dropout, ctx.train,
     ctx.bidirectional, ctx.batch_first, batch_sizes) = inputs
    ctx.has_c0, ctx.n_weights = c0 is not None, len(weights)
    ctx.has_batch_sizes, ctx.out_shape = batch_sizes is not None, output[0].shape
    # only tensors may be saved (torch.compile checks): the Nones are remembered apart
    ctx.save_for_backward(input, h0, *([c0] if c0 is not None else []), *weights,
                          *([batch_sizes] if batch_sizes is not None else []), output[3])


def _backward(ctx, d_out, d_hn, d_cn, _d_rng):
    if torch.is_grad_enabled():
        raise RuntimeError(
            "fastcells: a differentiable backward (create_graph=True) through a compiled layer "
            "on the CPU default backend (torch's kernels) is not supported; use "
            "backend='reference' for higher-order gradients under torch.compile")
    saved = list(ctx.saved_tensors)
    input, h0 = saved[0], saved[1]
    c0 = saved[2] if ctx.has_c0 else None
    k = 3 if ctx.has_c0 else 2
    weights = saved[k:k + ctx.n_weights]
    batch_sizes = saved[k + ctx.n_weights] if ctx.has_batch_sizes else None
    rng = saved[-1]
    d_out = input.new_zeros(ctx.out_shape) if d_out is None else d_out
    d_hn = torch.zeros_like(h0) if d_hn is None else d_hn
    d_cn = d_cn if ctx.has_c0 and d_cn is not None and d_cn.numel() else None
    grads = native_rnn_backward(ctx.mode, input, h0, c0, weights, ctx.has_biases,
                                ctx.num_layers, ctx.dropout, ctx.train, ctx.bidirectional,
                                ctx.batch_first, batch_sizes, rng, d_out, d_hn, d_cn)
    d_input, d_h0, d_c0, *d_weights = grads
    return (None, d_input, d_h0, d_c0 if ctx.has_c0 else None, d_weights, None, None, None,
            None, None, None, None)


native_rnn.register_autograd(_backward, setup_context=_setup_context)


def rnn(cell, inputs, net):
    """torch's forward as the op: (output, h_n) or (output, (h_n, c_n)); ``inputs`` a
    functional.NetInputs whose h0 holds the state in torch's form, ``net`` a functional.Net."""
    input, hx, _, weights, batch_sizes = inputs
    h0, c0 = cell.state(hx)
    out, hn, cn, _ = native_rnn(cell.name, input, h0, c0, list(weights), net.bias,
                                net.num_layers, float(net.dropout), net.training,
                                net.bidirectional, net.batch_first, batch_sizes)
    return out, cell.hidden(hn, cn)
