"""Synthetic datasets for tests and smoke runs: random samples shaped for a model family/config."""

from __future__ import annotations

import torch

from .shards import ShardWriter

# Latent sizes per named size: (frames F, height H, width W) on the latent grid.
SIZES = {"tiny": (3, 8, 8), "small": (5, 16, 16), "480p": (21, 60, 104)}


def synthesize(out_dir, *, family: str = "wan-vace", size: str = "tiny", n: int = 16, seed: int = 0,
               config=None, text_len: int = 8, samples_per_shard: int = 8):
    """Write `n` random samples for `family` (shapes from `config`, default the tiny test config)."""
    from ipa.models import synthetic_batch, tiny_config

    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"n must be a positive int, got {n!r}")
    F, H, W = SIZES[size]
    cfg = dict(config or tiny_config(family))
    with ShardWriter(out_dir, samples_per_shard=samples_per_shard, family=family, size=size,
                     config=cfg, synthetic=True) as writer:
        for i in range(n):
            b = synthetic_batch(family, cfg, 1, F, H, W, seed=seed * 100003 + i, text_len=text_len)
            tensors = {k: v[0] for k, v in b.items() if isinstance(v, torch.Tensor) and k != "draw"}
            writer.add(f"synth-{seed}-{i:05d}", tensors)
    return writer.out
