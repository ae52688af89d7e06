"""The route of a call on the fused kernels, decided once at its entry and passed down.

========================  ================================================================
``GRAPH``                 torch.compile or torch.jit.trace: the custom ops (a trace records
                          ops, and a Function's kernels are none)
``TRANSFORM``             a torch.func transform (grad, vmap, jacrev, jvp, ...): the autograd
                          Functions through torch's own ``apply``, which calls their vmap
                          and jvp rules
``FORWARD_AD``            inside ``torch.autograd.forward_ad``'s dual level: the Functions
                          (their jvp rules give the tangents)
``EAGER``                 plain autograd: the Functions, one node per layer (a layer none of
                          whose tensors requires grad records none)
``INFERENCE``             grad mode off: the kernels, no autograd node
========================  ================================================================

The backward has a route of its own, decided once where it starts (:func:`backward`).
"""
import torch
import torch.autograd.forward_ad as _forward_ad

GRAPH, TRANSFORM, FORWARD_AD, EAGER, INFERENCE = (
    "graph", "transform", "forward_ad", "eager", "inference")

_transforms_active = torch._C._are_functorch_transforms_active


def decide():
    """The route of a call starting now (see the module docstring)."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return GRAPH
    if _transforms_active():
        return TRANSFORM
    if _forward_ad._current_level >= 0:
        return FORWARD_AD
    return EAGER if torch.is_grad_enabled() else INFERENCE


def needs_grad(tensors):
    """Whether autograd must record a node for an op on ``tensors`` (grad mode is on)."""
    for t in tensors:
        if t is not None and t.requires_grad:
            return True
    return False


# The routes of a backward: create_graph=True (gradients that are themselves differentiable:
# the reference math), a legacy-vmap batched gradient (torch.autograd.grad(is_grads_batched=
# True)), a torch.func transform or forward mode (the backward's own Function, whose rules
# serve them), or a plain backward (the kernels, nothing recorded).
DIFFERENTIABLE, LEGACY_VMAP, RECORDED, PLAIN = "differentiable", "legacy_vmap", "recorded", "plain"


def _legacy_batched(*tensors):
    return any(t is not None and torch._C._functorch.is_legacy_batchedtensor(t) for t in tensors)


def backward(dy, dcn):
    """The route of a layer's backward starting now, with output gradients ``dy``, ``dcn``."""
    transform = _transforms_active()
    if torch.is_grad_enabled() and not transform:
        return DIFFERENTIABLE
    if _legacy_batched(dy, dcn):
        return LEGACY_VMAP
    if transform or _forward_ad._current_level >= 0:
        return RECORDED
    return PLAIN
