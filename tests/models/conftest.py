"""Tiny models and batches shared by the model tests (CPU, fp32)."""

from pathlib import Path

import torch

from ipa.models import build_transformer, synthetic_batch

REPO_ROOT = Path(__file__).resolve().parents[2]

# Small latent clips: F latent frames on an H x W latent grid.
SIZES = {"wan-vace": (3, 4, 4), "wan": (3, 4, 4), "wan-animate": (3, 4, 4)}


def tiny(family, seed=0, **kw):
    return build_transformer(family, "tiny", dtype=torch.float32, seed=seed, **kw)


def batch_for(family, model, batch_size=2, seed=1):
    F, H, W = SIZES[family]
    return synthetic_batch(family, model.config, batch_size, F, H, W, seed=seed)

