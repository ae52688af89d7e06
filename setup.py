from setuptools import setup

# The package index's page: self-contained (README.md's relative links and images would break
# there), written for someone deciding whether to install.
LONG_DESCRIPTION = """\
# fastcells

Fused Triton GPU kernels for LSTM, GRU and vanilla RNN layers and cells, and for
clip-by-global-norm, as drop-in replacements for `torch.nn.LSTM`, `GRU`, `RNN`, `LSTMCell`,
`GRUCell`, `RNNCell` and `torch.nn.utils.clip_grad_norm_` (also `get_total_norm` and
`clip_grads_with_norm_`): the same arguments, parameters, `state_dict` and outputs as torch's,
and invalid input raises torch's exception type with torch's message. The project's
`docs/limits.md` lists the exceptions.

```python
import torch
import fastcells

device = "cuda" if torch.cuda.is_available() else "cpu"

lstm = fastcells.LSTM(512, 512, num_layers=2, batch_first=True).to(device)  # nn.LSTM's args
y, (h, c) = lstm(torch.randn(64, 100, 512, device=device))   # on CUDA: the fused kernels
y.sum().backward()
norm = fastcells.clip_grad_norm_(lstm.parameters(), max_norm=1.0)   # a tensor on `device`

model = torch.nn.ModuleDict({"rnn": torch.nn.GRU(32, 64), "head": torch.nn.Linear(64, 10)})
model = fastcells.convert(model)   # model["rnn"] is now a fastcells.GRU, on the same Parameters
```

On CUDA the clip takes a few launches per dtype and synchronises with the host only when
`error_if_nonfinite=True`.

Backends: `auto` (the default: the Triton kernels for CUDA tensors, torch's own ops for CPU
tensors), `triton`, `reference` (plain PyTorch math) and `native` (torch's own ops); choose with
`fastcells.use_backend(name)`, the `FASTCELLS_BACKEND` environment variable or `backend=`.
On a machine without a GPU, eager calls run torch's own CPU kernels by default.

Install: `pip install fastcells` (or `pip install -e .` from a clone) next to PyTorch >= 2.11
and Triton >= 3.6, on Linux with Python 3.10 or newer. For a CPU-only machine, take PyTorch's
CPU build first: `pip install torch --index-url https://download.pytorch.org/whl/cpu`.

`python -m fastcells.demo` shows on the adding problem why gated cells and gradient clipping
exist: the vanilla RNN's gradient vanishes and it never learns the task, the LSTM and GRU solve
it, and an RNN set up to explode trains only with `fastcells.clip_grad_norm_`.

License: BSD-3-Clause.
"""

setup(
    name="fastcells",
    version="0.1.0",
    description="Fused Triton kernels for LSTM, GRU and RNN cells and clip-by-global-norm, "
    "drop-in for torch.nn",
    long_description=LONG_DESCRIPTION,
    long_description_content_type="text/markdown",
    license_expression="BSD-3-Clause",
    license_files=["LICENSE"],
    # torch >= 2.11 needs Python >= 3.10
    python_requires=">=3.10",
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Environment :: GPU :: NVIDIA CUDA",
        "Intended Audience :: Developers",
        "Intended Audience :: Science/Research",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
    # kernels/ is installed as fastcells.kernels; never as a top-level "kernels" package.
    packages=["fastcells", "fastcells.kernels"],
    package_dir={"fastcells": "fastcells", "fastcells.kernels": "kernels"},
    # the persistent schedule's GPU-measured dispatch table, where one is committed
    package_data={"fastcells.kernels": ["persistent_table.json"]},
    # The oldest versions the tests have run on (torch 2.11 and 2.13, triton 3.6): declare no
    # older, since fastcells/_dynamo_support.py patches Dynamo internals that move between releases.
    install_requires=["torch>=2.11", "triton>=3.6", "numpy"],
    extras_require={
        # exactly what `python -m pytest tests -q -n 2` needs: pytest-xdist for -n 2;
        # matplotlib for test_demo (the demo writes its plot); numpy<2.4 for Triton 3.6's
        # interpreter, which runs the kernels on machines without a GPU
        "test": ["pytest>=7", "pytest-xdist>=3", "matplotlib>=3.5", "numpy<2.4",
                 # tests/test_onnx.py: onnx reads the exported model, onnxruntime runs it (CPU
                 # wheels for Python 3.10-3.13), onnxscript is torch.onnx.export(dynamo=True)'s
                 "onnx>=1.23", "onnxruntime>=1.23", "onnxscript>=0.7"],
        "bench": ["pytest-benchmark>=4", "matplotlib>=3.5"],
        "demo": ["matplotlib>=3.5"],
    },
)
