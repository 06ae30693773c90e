"""Pixel masks to the transformer's latent grid (Wan's causal VAE: 8x space, 4x time, first frame
alone), by max-pooling so that any hand pixel marks its latent cell."""

from __future__ import annotations

import numpy as np


def latent_mask(pixel_mask, spatial_stride: int = 8, temporal_stride: int = 4):
    """`[T, H, W]` pixel mask with `T = 4k + 1` -> `[k + 1, H / 8, W / 8]` latent mask.

    Latent frame 0 is pixel frame 0 alone; latent frame `j >= 1` covers pixel frames
    `4j - 3 .. 4j`. Works on numpy arrays and torch tensors and returns the same kind and dtype.
    The HALO op wants frames `1..k` of the result: `halo_mask`.
    """
    shape = tuple(pixel_mask.shape)
    if len(shape) != 3:
        raise ValueError(f"pixel_mask must be [T, H, W], got shape {shape}")
    T, H, W = shape
    s, ts = int(spatial_stride), int(temporal_stride)
    if s <= 0 or ts <= 0:
        raise ValueError(f"spatial_stride and temporal_stride must be positive, got {s}, {ts}")
    if T < 1 or (T - 1) % ts:
        raise ValueError(f"pixel_mask must have T = {ts}k + 1 frames (Wan's causal VAE), got T = {T}")
    if H % s or W % s:
        raise ValueError(f"pixel_mask height and width must be divisible by {s}, got {H}x{W}")
    k, h, w = (T - 1) // ts, H // s, W // s
    is_numpy = isinstance(pixel_mask, np.ndarray)

    def amax(x, dims):
        return x.max(axis=dims) if is_numpy else x.amax(dim=dims)

    first = amax(pixel_mask[:1].reshape(1, h, s, w, s), (2, 4))
    if k == 0:
        return first
    rest = amax(pixel_mask[1:].reshape(k, ts, h, s, w, s), (1, 3, 5))
    return np.concatenate([first, rest]) if is_numpy else _torch_cat(first, rest)


def _torch_cat(a, b):
    import torch

    return torch.cat([a, b])


def halo_mask(pixel_mask, spatial_stride: int = 8, temporal_stride: int = 4):
    """The latent frames after the first, `[k, H/8, W/8]`: what `ipa.ops.halo_error` takes as
    `hand_mask[b]` (with `skip_frames=1`, the first latent frame is never hand-weighted)."""
    return latent_mask(pixel_mask, spatial_stride, temporal_stride)[1:]
