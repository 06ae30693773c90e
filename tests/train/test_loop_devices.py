"""The training loop's collectives on the backend a GPU run uses. The multi-process tests run gloo
on CPU tensors; NCCL reduces CUDA tensors only, so what the loop hands it is checked on a GPU, with
a one-process NCCL group (no DeepSpeed needed)."""

import os

import pytest
import torch
import torch.distributed as dist

from ipa.train.loop import _mean_over_ranks


@pytest.fixture
def process_group(request):
    backend = request.param
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29700 + os.getpid() % 200))
    dist.init_process_group(backend, rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("process_group, device", [
    ("gloo", "cpu"),
    pytest.param("nccl", "cuda", marks=pytest.mark.cuda),
], indirect=["process_group"])
def test_step_metrics_reduce_on_the_backend_device(process_group, device):
    if device == "cuda":
        torch.cuda.set_device(0)
    values = {"loss": torch.tensor(0.75, device=device), "ipa_gap": torch.tensor([-0.5], device=device),
              "model_error": torch.tensor(2.0, device=device, dtype=torch.bfloat16)}
    assert _mean_over_ranks(values) == {"ipa_gap": -0.5, "loss": 0.75, "model_error": 2.0}
