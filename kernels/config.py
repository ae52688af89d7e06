"""Every environment switch of fastcells, read in one place by one mechanism.

=========================  ==============  =========  ==========================================
variable                   values          default    what it chooses
=========================  ==============  =========  ==========================================
``FASTCELLS_BACKEND``      auto, triton,   auto       the backend of every op without an explicit
                           reference,                 ``backend=`` or ``use_backend``
                           native                     (fastcells.backend)
``FASTCELLS_CUDA_GRAPHS``  1, 0            1          on CUDA, replay a layer's step launches as
                                                      one CUDA graph (kernels.cuda_graph)
``FASTCELLS_RECURRENCE``   auto, step,     auto       the schedule of a layer's time loop:
                           persistent                 ``step``, one fused launch per step;
                                                      ``persistent``, the whole loop in one
                                                      launch wherever it is eligible
                                                      (kernels.persistent); ``auto``, persistent
                                                      only where a GPU measured it faster
``FASTCELLS_DIRECTIONS``   separate,       separate   EXPERIMENTAL, never timed on a GPU:
                           fused                      ``fused`` runs both directions of a
                                                      bidirectional layer in the same launches
                                                      (fastcells.experimental)
=========================  ==============  =========  ==========================================

A switch is read at every call (tests and sweeps set it between calls) and parsed once per raw
value; surrounding blanks and case are ignored, an empty value is the default, any other value
raises ValueError naming the variable.  This module lives with the kernels (which import
nothing of fastcells) so that both sides read the same table.
"""
import os
from typing import NamedTuple, Tuple


class Switch(NamedTuple):
    var: str
    choices: Tuple[str, ...]
    default: str
    what: str   # the noun of the error message: "unknown {what} 'x'"


BACKEND = Switch("FASTCELLS_BACKEND", ("auto", "triton", "reference", "native"), "auto",
                 "fastcells backend")
CUDA_GRAPHS = Switch("FASTCELLS_CUDA_GRAPHS", ("1", "0"), "1", "CUDA graphs setting")
RECURRENCE = Switch("FASTCELLS_RECURRENCE", ("auto", "step", "persistent"), "auto",
                    "recurrence schedule")
DIRECTIONS = Switch("FASTCELLS_DIRECTIONS", ("separate", "fused"), "separate",
                    "directions setting")
SWITCHES = (BACKEND, CUDA_GRAPHS, RECURRENCE, DIRECTIONS)

_parsed = {}   # (variable, raw value) -> its choice


def read(switch):
    """The value of ``switch`` now: one of its choices."""
    raw = os.environ.get(switch.var)
    if raw is None:
        return switch.default
    value = _parsed.get((switch.var, raw))
    if value is None:
        value = raw.strip().lower() or switch.default
        if value not in switch.choices:
            raise ValueError(f"{switch.var}: unknown {switch.what} {value!r}; expected one of "
                             f"{', '.join(switch.choices)}")
        _parsed[switch.var, raw] = value
    return value


def cuda_graphs():
    return read(CUDA_GRAPHS) == "1"


def schedule():
    """The time-loop schedule asked for: "auto", "step" or "persistent" (kernels.persistent.chosen
    decides per layer what runs)."""
    return read(RECURRENCE)


def fused_directions():
    return read(DIRECTIONS) == "fused"
