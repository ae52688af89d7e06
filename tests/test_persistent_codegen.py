"""The persistent kernels compile for sm_90 (on the CPU: Triton's compiler and bundled ptxas,
persistent_ptx_check.py) at every plan ``persistent.plan`` makes for the check's shapes, with
what a kernel whose programs wait on each other needs: no register spills, registers and shared
memory within one SM (one program per SM: P co-resident programs), the grid barrier's
release/acquire at GPU scope, and the state other programs wrote read through L2 only."""
import pytest

from codegen_utils import needs_nvidia_backend, run_check

REGS_PER_SM = 64 * 1024
SHARED_PER_SM = 227 * 1024   # sm_90's most shared memory per block


@pytest.fixture(scope="module")
def found():
    return run_check("persistent_ptx_check.py")


@needs_nvidia_backend
def test_every_variant_compiles(found):
    assert len(found) == 30
    assert not {k: v["error"] for k, v in found.items() if "error" in v}


@needs_nvidia_backend
def test_no_spills_and_fits_one_sm(found):
    for name, v in found.items():
        assert v["spill_stores"] == 0 and v["spill_loads"] == 0, (name, v)
        assert v["regs"] * v["num_warps"] * 32 <= REGS_PER_SM, (name, v)
        assert v["shared"] <= SHARED_PER_SM, (name, v)
        assert v["grid"][0] * v["grid"][1] * v["grid"][2] <= 132, (name, v)


@needs_nvidia_backend
def test_barrier_and_coherent_loads(found):
    for name, v in found.items():
        assert v["release_gpu"] and v["acquire_gpu"], (name, v)
        assert v["cg_loads"] > 0 and v["ca_async"] == 0, (name, v)


@needs_nvidia_backend
def test_both_placements_of_the_weights_are_checked(found):
    assert {v["resident"] for v in found.values()} == {True, False}
    assert {v["block_b"] for v in found.values()} == {16, 32, 64}
