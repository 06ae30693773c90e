"""`ipa generate` under torchrun: conditions sharded over 2 gloo ranks, same candidates as 1 rank."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]


def test_two_ranks_match_one(conditions, tiny_model, candidates, tmp_path):
    out = tmp_path / "two"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29533", "-m", "ipa.cli", "generate", "--model", str(tiny_model),
                           "--conditions", str(conditions), "--out", str(out), "--candidates", "2", "--steps", "2",
                           "--seed", "7", "--batch-size", "1", "--dtype", "float32"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "run.json").read_text())["world_size"] == 2
    for cond in ("clip_a", "clip_b"):
        for k in range(2):
            a = load_file(str(out / cond / f"cand-{k}" / "latents.safetensors"))["x0"]
            b = load_file(str(candidates / cond / f"cand-{k}" / "latents.safetensors"))["x0"]
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)  # batch 1 on 2 ranks == batch 4 on 1
