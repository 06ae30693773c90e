"""Tiny inputs for the pipeline tests: synthetic clips written with PyAV, DWPose-style keypoints, a
tiny random Wan VAE saved as a local folder, a cached prompt embedding."""

import numpy as np
import pytest
import torch

SRC_H, SRC_W, SRC_T = 40, 56, 12  # source clips: not the target size, so resize + crop are exercised
SIZE, FRAMES = (32, 32), 9        # prepared: 9 = 4 * 2 + 1 frames -> 3 latent frames (+1 reference)
TEXT_DIM, TEXT_LEN = 32, 8        # the tiny wan-vace transformer's text_dim


def tiny_vae():
    """diffusers' tiny AutoencoderKLWan test config (8x space, 4x time, z_dim 16)."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    return AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True]).eval()


def wholebody(t, T, H=SRC_H, W=SRC_W):
    """A DWPose 133-point person [133, 3] whose hands sweep across the frame over time."""
    k = np.zeros((133, 3))
    cx = W * (0.3 + 0.4 * t / max(T - 1, 1))
    body = {0: (0.5, 0.15), 5: (0.35, 0.35), 6: (0.65, 0.35), 7: (0.3, 0.55), 8: (0.7, 0.55),
            9: (0.28, 0.7), 10: (0.72, 0.7), 11: (0.4, 0.75), 12: (0.6, 0.75)}
    for i, (x, y) in body.items():
        k[i] = (x * W, y * H, 0.9)
    for i in range(68):  # a ring of face points
        a = 2 * np.pi * i / 68
        k[23 + i] = (0.5 * W + 3 * np.cos(a), 0.15 * H + 3 * np.sin(a), 0.8)
    for start, (hx, hy) in ((91, (cx - 8, 0.7 * H)), (112, (cx + 8, 0.7 * H))):
        for j in range(21):
            k[start + j] = (hx + 4 * np.cos(j), hy + 4 * np.sin(j), 0.9)
    return k


def write_clip(path, T=SRC_T, H=SRC_H, W=SRC_W, seed=0):
    from ipa.hands.media import write_video

    rng = np.random.default_rng(seed)
    frames = np.zeros((T, H, W, 3), np.uint8)
    for t in range(T):
        frames[t] = rng.integers(0, 255, 3)
        x = 4 + 2 * t
        frames[t, 10:30, x:x + 10] = 255
    write_video(path, frames, fps=8)


@pytest.fixture(scope="session")
def inputs(tmp_path_factory):
    """(videos dir, poses dir, vae dir, text-emb file) with two clips."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("inputs")
    videos, poses = root / "videos", root / "poses"
    videos.mkdir()
    poses.mkdir()
    for i, name in enumerate(("clip_a", "clip_b")):
        write_clip(videos / f"{name}.mp4", seed=i)
        np.save(poses / f"{name}.npy", np.stack([wholebody(t, SRC_T) for t in range(SRC_T)]))
    vae = root / "vae"
    tiny_vae().save_pretrained(vae)
    emb = root / "prompt.safetensors"
    save_file({"text_emb": torch.randn(TEXT_LEN, TEXT_DIM, generator=torch.Generator().manual_seed(0))}, str(emb))
    return videos, poses, vae, emb


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """The tiny wan-vace transformer saved as a local folder, as `ipa generate --model` takes it."""
    from ipa.models import build_transformer

    path = tmp_path_factory.mktemp("model") / "transformer"
    build_transformer("wan-vace", "tiny", dtype=torch.float32, seed=0).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def conditions(inputs, tmp_path_factory):
    """`ipa data prepare` on the two clips (via the command line)."""
    from ipa.cli import main

    videos, poses, vae, emb = inputs
    out = tmp_path_factory.mktemp("prepared") / "conditions"
    assert main(["data", "prepare", "--videos", str(videos), "--poses", str(poses), "--vae", str(vae),
                 "--text-emb", str(emb), "--out", str(out), "--size", f"{SIZE[0]}x{SIZE[1]}",
                 "--frames", str(FRAMES)]) == 0
    return out


@pytest.fixture(scope="session")
def candidates(conditions, tiny_model, tmp_path_factory):
    """`ipa generate`: 2 candidates per condition, 2 Euler steps, fp32, one batch of 4."""
    from ipa.cli import main

    out = tmp_path_factory.mktemp("generated") / "candidates"
    assert main(["generate", "--model", str(tiny_model), "--conditions", str(conditions), "--out", str(out),
                 "--candidates", "2", "--steps", "2", "--seed", "7", "--batch-size", "4",
                 "--dtype", "float32"]) == 0
    return out
