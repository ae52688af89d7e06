from setuptools import setup

setup(
    name="fastcells",
    version="0.1.0",
    description="Fused Triton kernels for LSTM, GRU and RNN cells and clip-by-global-norm, "
    "drop-in for torch.nn",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    # kernels/ is installed as fastcells.kernels; never as a top-level "kernels" package.
    packages=["fastcells", "fastcells.kernels"],
    package_dir={"fastcells": "fastcells", "fastcells.kernels": "kernels"},
    # The oldest versions the tests have run on (torch 2.11 and 2.13, triton 3.6): declare no
    # older, since fastcells/_dynamo_support.py patches Dynamo internals that move between releases.
    install_requires=["torch>=2.11", "triton>=3.6", "numpy"],
    extras_require={
        # exactly what `python -m pytest tests -q -n 2` needs: pytest-xdist for -n 2;
        # matplotlib for test_demo (the demo writes its plot); numpy<2.4 for Triton 3.6's
        # interpreter, which runs the kernels on machines without a GPU
        "test": ["pytest>=7", "pytest-xdist>=3", "matplotlib>=3.5", "numpy<2.4"],
        "bench": ["pytest-benchmark>=4", "matplotlib>=3.5"],
        "demo": ["matplotlib>=3.5"],
    },
)
