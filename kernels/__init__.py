"""Pure Triton kernels and their thin launchers (installed as ``fastcells.kernels``).

torch + triton only: nothing here knows about autograd, modules or backends.
"""
