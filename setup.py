"""Build and install `ipa`.

Layout (see ../shared/DESIGN.md): the Python package lives in `ipa/`, the Triton kernels in
`kernels/` (installed as `ipa.kernels`, never as a top-level `kernels` module), and the C++ CPU
kernels in `csrc/` (built with pybind11 as `ipa._C`, without torch headers so the build does not
depend on the torch ABI).

Set IPA_BUILD_NATIVE=1 to compile the CPU kernels for this machine's instruction set (the
Makefile does, since it builds where it runs). The default is a portable x86-64 build that
compiles the kernels' loops (csrc/halo_kernels.inc) for baseline x86-64, AVX2 and AVX-512 and
picks one when it loads: the best the CPU runs, then `ipa.ops` matches torch's CPU capability
(`ipa._C.isa()` says which).
"""

import os

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup

# -fno-trapping-math: without it GCC keeps the hand mask's clamp as branches below AVX-512 and
# vectorizes nothing there (benchmarks/NOTES.md, v9); the kernels never rely on FP exceptions.
extra_compile_args = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
if os.environ.get("IPA_BUILD_NATIVE") == "1":
    extra_compile_args += ["-march=native", "-mprefer-vector-width=512", "-DIPA_NATIVE"]

ext_modules = [
    Pybind11Extension(
        "ipa._C",
        sorted(os.path.join("csrc", f) for f in os.listdir("csrc") if f.endswith(".cpp")),
        cxx_std=17,
        extra_compile_args=extra_compile_args,
        extra_link_args=["-fopenmp"],
        depends=sorted(os.path.join("csrc", f) for f in os.listdir("csrc") if f.endswith(".inc")),
    )
]

linux_x86 = 'platform_system == "Linux" and platform_machine == "x86_64"'

setup(
    name="ipa",
    version="0.1.0",
    description="Implicit Preference Alignment for human image animation: fused ops, "
    "DeepSpeed trainer, hand masks, data pipeline and evaluation.",
    long_description=open("README.md").read() if os.path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["ipa", "ipa.*"]) + ["ipa.kernels"],
    package_dir={"ipa.kernels": "kernels"},
    package_data={"ipa.demo": ["assets/base/*"]},  # the demo's pretrained base model (13 MB)
    ext_modules=ext_modules,
    cmdclass={"build_ext": build_ext},
    install_requires=[
        "torch>=2.5",
        f"triton>=3.2; {linux_x86}",
        "numpy",
        "pyyaml",
        "tqdm",
        "matplotlib",
        "safetensors",
        "diffusers>=0.35",
        "transformers",
        "peft>=0.15",
        "deepspeed>=0.16",
        "mediapipe>=0.10.21",
        "av",
        "scipy",
        "scikit-image",
        "tensorboard",
    ],
    extras_require={
        # pytest-xdist: `make test` runs 2 workers; selenium: the review-page browser test
        "test": ["pytest>=8", "pytest-timeout", "pytest-xdist>=3.6", "selenium>=4.10"],
        "flash": ["flash-attn>=2.6.3"],
        # LPIPS from an `lpips` state dict (needs a torchvision that imports beside torch); a
        # TorchScript LPIPS needs nothing extra
        "eval": ["lpips"],
    },
    entry_points={"console_scripts": ["ipa=ipa.cli:entry"]},
    zip_safe=False,
)
