"""`ipa generate` on a GPU: the sampler and the whole command on CUDA agree with the CPU run.

Skipped without CUDA; run by `benchmarks/gpu_suite.sh` (which carries diffusers). Same weights,
same seeds: the initial noise is drawn on the CPU from per-candidate generators, so the two devices
start from identical latents and differ only by kernel rounding (TF32 convolutions in fp32, bf16
matmuls). A device-dependent noise draw or a step on the wrong device would give an independent
sample: a relative difference near sqrt(2), far above the bounds below.
"""

import pytest
import torch

from ipa.generate import sample
from ipa.models import build_transformer, synthetic_batch, tiny_config

pytestmark = pytest.mark.cuda

SEEDS = [11, 12]
# norm(gpu - cpu) / norm(cpu) after 3 Euler steps of the tiny transformer
BOUNDS = {torch.float32: 5e-3, torch.bfloat16: 2e-2}  # bf16 on CPU: 3e-3


def relative_difference(a, b):
    return ((a.double().cpu() - b.double().cpu()).norm() / b.double().cpu().norm()).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_sampler_on_cuda_matches_cpu(dtype):
    cond = synthetic_batch("wan-vace", tiny_config("wan-vace"), len(SEEDS), 3, 8, 8, seed=0)
    cpu = sample(build_transformer("wan-vace", "tiny", dtype=torch.float32, seed=0), cond, SEEDS, steps=3)
    gpu = sample(build_transformer("wan-vace", "tiny", dtype=dtype, device="cuda", seed=0), cond, SEEDS, steps=3)
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float32 and gpu.shape == cpu.shape
    assert torch.isfinite(gpu).all()
    assert relative_difference(gpu, cpu) < BOUNDS[dtype]


@pytest.fixture(scope="session")
def av():
    return pytest.importorskip("av", reason="PyAV is not installed here (candidates are written as mp4)")


def test_generate_on_cuda_matches_cpu(av, conditions, tiny_model, tmp_path):
    from safetensors.torch import load_file

    from ipa.generate import CANDIDATE_FILES, candidate_dir, generate

    runs = {}
    for device in ("cpu", "cuda"):
        runs[device] = generate(tiny_model, conditions, tmp_path / device, candidates=2, steps=2, seed=7,
                                dtype=torch.float32, device=device, progress=False)
    for cond in ("clip_a", "clip_b"):
        for k in range(2):
            folders = {d: candidate_dir(out, cond, k) for d, out in runs.items()}
            assert all((folders["cuda"] / name).is_file() for name in CANDIDATE_FILES)
            lat = {d: load_file(str(f / "latents.safetensors"))["x0"] for d, f in folders.items()}
            assert relative_difference(lat["cuda"], lat["cpu"]) < BOUNDS[torch.float32]
