"""The `ipa bench model --gpu-block` code path at toy sizes on CPU, so a lent GPU's minutes are not
spent finding a bug in it. The benchmark's numbers are not checked here (no timed tests)."""

import argparse

import pytest
import torch

from benchmarks.model import MODES, attention_tflops, block_steps, measure, rows_for


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_block_steps_run_every_mode(device):
    device = torch.device(device)
    steps, held, S = block_steps(device, tokens_fhw=(2, 2, 3), text_len=4, rank=2, dim=32, heads=2, ffn=64)
    assert S == 2 * 2 * 3 and set(steps) == set(MODES)
    assert held["ipa-copy"] > held["sft"] == held["ipa-adapter"] == held["ipa-precomputed"]
    args = argparse.Namespace(min_reps=1, budget=0.0)
    rows = rows_for(measure(steps, held, device, args), {"device": device.type}, {})
    assert [r["mode"] for r in rows] == list(MODES)
    assert rows[0]["x_time_vs_sft"] == 1.0 and all(r["median_ms"] > 0 for r in rows)


def test_attention_tflops_runs_through_the_dispatcher():
    assert attention_tflops(torch.device("cpu"), "native", S=64, heads=2, head_dim=8) > 0


@pytest.mark.parametrize("gpu,peak", [
    ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H100 NVL", 835.0),
    ("NVIDIA H200", 989.0), ("NVIDIA H200 NVL", 835.0), ("NVIDIA GH200 480GB", 989.0),
    ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA L40S", 362.0), ("Tesla T4", None),
])
def test_bf16_peak_by_gpu_name(gpu, peak):
    from benchmarks.model import bf16_peak_tflops

    assert bf16_peak_tflops(gpu) == peak
