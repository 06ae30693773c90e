"""`ipa train` on a GPU: NCCL, bf16, DeepSpeed ZeRO-2 with the adapter reference and ZeRO-3 with
a sharded copy, the fused ops on CUDA inside the real loop, checkpoints. One process per run (a lent
machine has one GPU); the multi-rank logic is covered on CPU by test_distributed.py. Run by
`benchmarks/gpu_suite.sh train`, which installs the DeepSpeed wheels `make gpu-wheels` gathers."""

import json
import math

import pytest

from .test_distributed import TINY, ipa

pytestmark = [pytest.mark.cuda, pytest.mark.multiprocess]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed here (make gpu-wheels, carry .whl)")
    from ipa.data import synthesize

    return synthesize(tmp_path_factory.mktemp("gpu-train") / "data", n=4, seed=1)


# bf16 as the 14B configs run; "native" attention lets PyTorch pick a kernel for the tiny config's
# 12-wide heads (the forced backends are tested on a 64-wide config in tests/models/test_attention.py).
GPU = ("model.dtype=bfloat16", "deepspeed.bf16=true", "model.attention_backend=native", "run.verify_weights=true")


@pytest.mark.parametrize("setup", [
    ("deepspeed.zero_stage=2", "reference.mode=adapter"),
    ("deepspeed.zero_stage=3", "reference.mode=copy"),
], ids=["zero2-adapter", "zero3-copy"])
def test_ipa_training_runs_on_the_gpu(setup, data, tmp_path):
    out = tmp_path / "run"
    ipa("train", "--config", TINY, "--nproc", "1", "--output-dir", str(out), f"data.path={data}",
        "run.steps=3", "run.save_every=2", *GPU, *setup)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert abs(rows[0]["loss"] - math.log(2)) < 1e-3, "step 0: policy == reference, so the loss is log 2"
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in rows)
    summary = json.loads((out / "rank0.json").read_text())
    assert summary["device"] == "cuda:0" and summary["peak_memory_mb"] > 0
    assert summary["reference_digest_start"] == summary["reference_digest_end"], "the reference must not move"
    assert summary["policy_trainable_digest_start"] != summary["policy_trainable_digest_end"]
    assert (out / "checkpoints" / "latest").read_text().strip() == "step00000003"


def test_precomputed_reference_on_the_gpu(data, tmp_path):
    """`ipa precompute-reference` (its errors gathered over NCCL) and a run that reads them."""
    store = tmp_path / "ref.safetensors"
    precomputed = ("reference.mode=precomputed", f"reference.store={store}", "reference.draws=2")
    ipa("precompute-reference", "--config", TINY, "--nproc", "1", "--output-dir", str(tmp_path / "pre"),
        f"data.path={data}", *GPU, *precomputed)
    out = tmp_path / "run"
    # Batch 1, as the precompute runs: same shapes, same GPU kernels, so the step-0 errors match the
    # stored ones to the bit and the loss is log 2 (other batch sizes may pick other GEMM tilings,
    # whose bf16 outputs differ by an ulp here and there: ~1e-5 in an error, x300 in the logit).
    ipa("train", "--config", TINY, "--nproc", "1", "--output-dir", str(out), f"data.path={data}",
        "run.steps=3", "run.export=false", "data.micro_batch=1", *GPU, *precomputed)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert abs(rows[0]["loss"] - math.log(2)) < 1e-3 and all(math.isfinite(r["loss"]) for r in rows)
    assert json.loads((out / "rank0.json").read_text())["device"] == "cuda:0"
