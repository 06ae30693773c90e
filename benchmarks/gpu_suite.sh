#!/usr/bin/env bash
# The GPU suite: one command for a lent GPU machine (or any CUDA box with torch + triton).
#
#   make gpu-wheels                                   # here: wheels the GPU image lacks -> .whl/
#   bash benchmarks/gpu_suite.sh [tests] [ops] [model] [tune]   # there, carrying .whl; default: all four
#   bash benchmarks/gpu_suite.sh train                # a second call, when device time is left
#
# Installs the package offline (carried wheels first), then runs the phases, each under its own
# time limit so that the whole run fits one 10-minute device call (install ~45 s, then at most
# TESTS_S + OPS_S + MODEL_S + TUNE_S = 90 + 130 + 160 + 150 s). On the lent H200 (2026-12-04)
# they took 38-43, 57, 127 and 45 s (tune then swept bf16 only; with fp32 too, ~90 s): ~7 minutes.
#   tests  the CUDA tests (CPU ones are CI's): the Triton ops against the reference, opcheck,
#          compile; the ops benchmark at a toy size (its CUDA-graph timing); the training loop's
#          metrics reduction on NCCL; with diffusers there, also attention backends' agreement
#          and the GPU block's toy run
#   ops    ipa bench ops: fused IPA loss vs eager vs torch.compile, all sizes, bf16 and fp32
#   model  ipa bench model --gpu-block: one Wan-14B block at 32,760 tokens, SDPA backends
#   tune   python -m benchmarks.tune_halo: the Triton kernels' launch configurations swept at
#          720p-b8 in bf16 and fp32, and where a fused step's GPU time goes
#   train  (not in the default run) `ipa train` on the GPU: NCCL, bf16, ZeRO-2 adapter and ZeRO-3
#          copy reference, 3 steps each with checkpoints (needs the DeepSpeed wheels in .whl)
# A phase cut off by its limit keeps the rows it measured: the benchmarks write their CSV row by
# row. Results land in benchmarks/results/ (ops-<gpu>.csv/.png, model-<gpu>-block.csv/.png,
# tune-halo-<gpu>.csv) and,
# with the suite's log, in $OUT when set (the device tool brings back at most 8 files), copied
# after every phase: a call killed at its limit still brings back what the finished phases wrote.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RESULTS=${RESULTS:-benchmarks/results}
OUT=${OUT:-}
LOG=${OUT:-/tmp}/gpu-suite.log
PHASES=${*:-tests ops model tune}
TESTS_S=${TESTS_S:-90} OPS_S=${OPS_S:-130} MODEL_S=${MODEL_S:-160} TRAIN_S=${TRAIN_S:-240} TUNE_S=${TUNE_S:-150}
# GPU timings are steady: short budgets. The issue's key sizes first (the largest for the
# bandwidth target, 480p-b2 for the CPU comparison), so a cut-off run still has them.
OPS_ARGS=${OPS_ARGS:---budget 1 --sizes 720p-b8 480p-b2 720p-b2 480p-b1}
MODEL_ARGS=${MODEL_ARGS:---budget 1.5 --min-reps 5}
for p in $PHASES; do
  case $p in tests|ops|model|tune|train) ;; *) echo "gpu_suite.sh: unknown phase '$p' (phases: tests ops model tune train)"; exit 2 ;; esac
done
export PYTHONUNBUFFERED=1
mkdir -p "$RESULTS" ${OUT:+"$OUT"}
exec > >(tee "$LOG") 2>&1
TEE=$!
STAMP=$(mktemp)

say() { printf '\n== %s (%s)\n' "$*" "$(date +%T)"; }

say "install"
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
IPA_BUILD_NATIVE=1 $PY -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
command -v nvidia-smi >/dev/null && \
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
$PY -c "import torch, triton, ipa.ops; print('torch', torch.__version__, '| triton', triton.__version__,
'| cuda' if torch.cuda.is_available() else '| no CUDA', torch.cuda.get_device_name() if torch.cuda.is_available() else '',
'| ipa.ops backends:', ipa.ops.available_backends('cuda' if torch.cuda.is_available() else 'cpu'))" || exit 1

collect() {  # what this run wrote so far goes beside the log
  [ -n "$OUT" ] && find "$RESULTS" -maxdepth 1 -type f -newer "$STAMP" -exec cp {} "$OUT"/ \;
  return 0
}

declare -A STATUS
phase() {  # phase NAME SECONDS COMMAND...: run under a limit, record how it ended
  local name=$1 limit=$2; shift 2
  say "$name (limit ${limit}s)"
  timeout "$limit" "$@"
  local rc=$?
  case $rc in
    0) STATUS[$name]=ok ;;
    124) STATUS[$name]="cut off at ${limit}s" ;;
    *) STATUS[$name]="failed (exit $rc)" ;;
  esac
  collect
}

HAVE_DIFFUSERS=$($PY -c "import diffusers" 2>/dev/null && echo 1)
MODEL_TESTS=${HAVE_DIFFUSERS:+tests/models/test_attention.py tests/bench/test_model_bench.py tests/pipeline/test_gpu_generate.py}
for p in $PHASES; do
  case $p in
    tests) phase tests "$TESTS_S" $PY -m pytest -m cuda tests/ops tests/bench/test_ops_bench.py \
             tests/train/test_loop_devices.py $MODEL_TESTS \
             -q -p no:cacheprovider ;;
    ops)   phase ops "$OPS_S" $PY -m benchmarks.ops --out-dir "$RESULTS" $OPS_ARGS ;;
    model) if [ -n "$HAVE_DIFFUSERS" ]; then
             phase model "$MODEL_S" $PY -m benchmarks.model --gpu-block --out-dir "$RESULTS" $MODEL_ARGS
           else
             STATUS[model]="not run: diffusers missing (make gpu-wheels here, carry .whl)"
           fi ;;
    tune)  phase tune "$TUNE_S" $PY -m benchmarks.tune_halo --out-dir "$RESULTS" ;;
    train) if $PY -c "import deepspeed" 2>/dev/null; then
             phase train "$TRAIN_S" $PY -m pytest -m cuda tests/train/test_gpu_train.py -q -p no:cacheprovider
           else
             STATUS[train]="not run: deepspeed missing (make gpu-wheels here, carry .whl)"
           fi ;;
  esac
done

say "summary"
status=0
for p in $PHASES; do
  echo "  $p: ${STATUS[$p]}"
  [ "${STATUS[$p]}" = ok ] || status=1
done
exec >&- 2>&-
wait "$TEE"  # the log is whole before the device tool collects $OUT
exit $status
