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
        # pytest-xdist: the README's test command runs two workers (the interpreter is one
        # process per core; CI's 2 cores take half the time)
        "test": ["pytest>=7", "pytest-xdist>=3"],
        "bench": ["pytest-benchmark>=4", "matplotlib>=3.5"],
        "demo": ["matplotlib>=3.5"],
    },
)
