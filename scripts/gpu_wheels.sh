#!/usr/bin/env bash
# Wheels for the device tool's GPU machine, gathered here into .whl/ (git-ignored; name it in the
# run's `carry`): that machine reaches no registry. Its image has python3 3.12 with torch, triton,
# peft, transformers, safetensors, tensorboard, matplotlib and pytest, but no diffusers (the model
# benchmark needs it) and no DeepSpeed (the `train` phase needs it). Pinned to the versions this
# venv tests against; about 10 MB in all.
#   diffusers                     pure Python, one wheel (its other needs are on the image)
#   deepspeed                     PyPI has only its source: built here into a pure-Python wheel
#                                 (DS_BUILD_OPS=0: no compiled ops; the trainer uses torch's AdamW)
#   pydantic(-core), hjson, ...   what DeepSpeed needs that the image lacks
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
version() { $PY -c "import importlib.metadata as m; print(m.version('$1'))"; }
mkdir -p .whl
rm -f .whl/*.whl
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  "diffusers==$(version diffusers)" "pydantic==$(version pydantic)" "pydantic-core==$(version pydantic-core)" \
  "annotated-types==$(version annotated-types)" "typing-inspection==$(version typing-inspection)" \
  "hjson==$(version hjson)"
DS_BUILD_OPS=0 $PY -m pip wheel -q --no-deps --no-build-isolation -w .whl "deepspeed==$(version deepspeed)"
ls -l .whl
echo "carry .whl, then on the GPU machine: bash benchmarks/gpu_suite.sh   (and: ... gpu_suite.sh train)"
