"""Eager-mode quantization (``torch.ao.quantization.quantize_dynamic``, ``propagate_qconfig_`` and
``convert``) quantizes a fastcells module as it does its torch twin.

torch keys both steps by a module's exact class (``type_before_parametrizations``): the qconfig
lookup (``qconfig_spec={nn.LSTM, nn.GRU, nn.Linear}``, or the default spec) and the swap
(``mapping[type(mod)]``), and the quantized classes' ``from_float`` checks ``type(mod)`` against
torch's own.  So a fastcells LSTM, a subclass of torch.nn.LSTM, was silently left in float.
torch has no public hook for either step, so two functions of ``torch.ao.quantization.quantize``
are wrapped, once, when fastcells is imported (:func:`install`):

* ``_propagate_qconfig_helper`` (behind ``propagate_qconfig_``, which ``quantize_dynamic``,
  ``prepare`` and ``quantize`` call): a spec that names a torch class configures that class's
  fastcells twin too, unless the spec names the fastcells class itself;
* ``swap_module`` (behind ``convert``): a fastcells module with a qconfig, whose class or whose
  torch twin's class the mapping names, is swapped as its torch twin would be: the mapping's
  ``from_float`` gets a torch module holding the very same Parameters (and hooks, and qconfig).

The result is torch's quantized module (``torch.ao.nn.quantized.dynamic.LSTM`` etc.), the one
the torch twin gives, with the same outputs; it runs torch's quantized kernels.  Modules torch
does not quantize (``nn.RNN``; anything under a spec or mapping that leaves it out) stay
fastcells'.  Nothing else changes: torch's own modules quantize exactly as before.
"""
import functools
import importlib
import warnings

import torch
from torch.nn.utils.parametrize import type_before_parametrizations

from .modules import TWINS, twin

# fastcells class -> torch class
_TORCH_OF = {fast: torch_cls for torch_cls, fast in TWINS.items()}


def _warn(why):
    warnings.warn(
        f"fastcells: cannot hook torch.ao.quantization on torch {torch.__version__} ({why}); "
        "quantize_dynamic leaves fastcells' modules in float there (convert a model's fastcells "
        "modules back to torch's before quantizing it). fastcells is tested with torch 2.11 and "
        "2.13.", RuntimeWarning, stacklevel=3)


def with_twins(qconfig_dict):
    """``qconfig_dict`` with each fastcells class configured as its torch twin, unless it has an
    entry of its own (the same dict when there is nothing to add)."""
    extra = {fast: qconfig_dict[torch_cls] for torch_cls, fast in TWINS.items()
             if torch_cls in qconfig_dict and fast not in qconfig_dict}
    return {**qconfig_dict, **extra} if extra else qconfig_dict


def _wrap_propagate(original):
    @functools.wraps(original)
    def _propagate_qconfig_helper(module, qconfig_dict, *args, **kwargs):
        return original(module, with_twins(qconfig_dict), *args, **kwargs)
    return _propagate_qconfig_helper


def _wrap_swap(original):
    @functools.wraps(original)
    def swap_module(mod, mapping, custom_module_class_mapping, *args, **kwargs):
        cls = type_before_parametrizations(mod)
        torch_cls = _TORCH_OF.get(cls)
        if (torch_cls is None or getattr(mod, "qconfig", None) is None
                or cls in custom_module_class_mapping
                or (cls not in mapping and torch_cls not in mapping)):
            return original(mod, mapping, custom_module_class_mapping, *args, **kwargs)
        if cls in mapping:  # the user's entry for fastcells' class, applied to the torch twin
            mapping = {**mapping, torch_cls: mapping[cls]}
        as_torch = twin(mod, torch_cls)
        new = original(as_torch, mapping, custom_module_class_mapping, *args, **kwargs)
        return mod if new is as_torch else new
    return swap_module


def install():
    """Wrap torch.ao.quantization.quantize's two functions once; returns whether they are
    wrapped.  On a torch whose quantization internals moved, warn and leave them as they are."""
    try:
        # the module (the package's attribute of that name is the function quantize)
        quantize = importlib.import_module("torch.ao.quantization.quantize")
        helper, swap = quantize._propagate_qconfig_helper, quantize.swap_module
    except Exception as e:  # noqa: BLE001  (any torch: fastcells must still import)
        _warn(f"{type(e).__name__}: {e}")
        return False
    if not getattr(helper, "_fastcells", False):
        quantize._propagate_qconfig_helper = _wrap_propagate(helper)
        quantize._propagate_qconfig_helper._fastcells = True
    if not getattr(swap, "_fastcells", False):
        quantize.swap_module = _wrap_swap(swap)
        quantize.swap_module._fastcells = True
    return True


install()
