"""Synthetic datasets for tests and smoke runs: random samples shaped for a model family/config."""

from __future__ import annotations

import torch

from .shards import ShardWriter

# Latent sizes per named size: (frames F, height H, width W) on the latent grid.
SIZES = {"tiny": (3, 8, 8), "small": (5, 16, 16), "480p": (21, 60, 104)}


def synthesize(out_dir, *, family: str = "wan-vace", size: str = "tiny", n: int = 16, seed: int = 0,
               config=None, text_len: int = 8, samples_per_shard: int = 8, with_loser: bool = False):
    """Write `n` random samples for `family` (shapes from `config`, default the tiny test config);
    `with_loser` adds an `x0_loser` latent per sample (x0 plus noise), what `objective.name=dpo` trains on."""
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
            if with_loser:
                g = torch.Generator().manual_seed(seed * 100003 + i + 1)
                tensors["x0_loser"] = tensors["x0"] + 0.5 * torch.randn(tensors["x0"].shape, generator=g)
            writer.add(f"synth-{seed}-{i:05d}", tensors)
    return writer.out
