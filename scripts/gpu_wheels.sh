#!/usr/bin/env bash
# Wheels for the device tool's GPU machine, downloaded here into .whl/ (git-ignored; name it in
# the run's `carry`): that machine reaches no registry. Its image has python3 3.12 with torch,
# triton, peft, transformers, safetensors, matplotlib and pytest, but no diffusers, which the
# model benchmark needs; diffusers is pure Python, so one wheel does (its other needs are there).
# Pinned to the diffusers this venv tests against.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
version=$($PY -c "import diffusers; print(diffusers.__version__)")
mkdir -p .whl
rm -f .whl/diffusers-*.whl
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 -d .whl "diffusers==$version"
ls -l .whl
echo "carry .whl, then on the GPU machine: bash benchmarks/gpu_suite.sh"
