#!/usr/bin/env bash
# The GPU suite, one command for a lent GPU machine (or any CUDA box with torch + triton):
#   bash benchmarks/gpu_suite.sh
# Installs the package offline (wheels in .whl/ first, if carried), runs the op tests (CUDA ones
# included), runs the GPU benchmarks, and leaves CSV + PNG in benchmarks/results/ (and in $OUT,
# when set, for the device tool to bring back). Budget: well under 10 minutes on an H100.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RESULTS=benchmarks/results
OUT=${OUT:-$RESULTS}
mkdir -p "$OUT" "$RESULTS"
export PYTHONUNBUFFERED=1

if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
IPA_BUILD_NATIVE=1 $PY -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu-info.txt"
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu-info.txt"

status=0
# CPU-only checks (the portable C++ build, Triton builds without a GPU) are left to CI.
timeout 240 $PY -m pytest tests/ops -q -p no:cacheprovider --ignore=tests/ops/test_cpu_isas.py \
  --ignore=tests/ops/test_triton_compile.py 2>&1 | tee "$OUT/gpu-tests.log" || status=1
timeout 360 $PY -m benchmarks.ops --out-dir "$RESULTS" 2>&1 | tee "$OUT/gpu-bench-ops.log" || status=1
if $PY -c "import diffusers" 2>/dev/null && [ -f benchmarks/model.py ]; then
  timeout 180 $PY -m benchmarks.model --gpu-block --out-dir "$RESULTS" 2>&1 | tee "$OUT/gpu-bench-model.log" || status=1
fi
[ "$OUT" != "$RESULTS" ] && cp "$RESULTS"/*-h[0-9]*.csv "$RESULTS"/*-h[0-9]*.png "$OUT"/ 2>/dev/null
exit $status
