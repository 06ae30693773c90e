"""Random batches with exactly the keys of `ipa.models.inputs`, shaped for a given model config.

For tests and benchmarks: every tensor comes from one seeded CPU generator, so a batch is a pure
function of (family, config, sizes, seed).
"""

import torch

from .inputs import check_family


def synthetic_batch(family, transformer_config, batch_size, num_frames, height, width, *, seed=0,
                    text_len=8, image_len=4, hand_fraction=0.1, dtype=torch.float32, device="cpu"):
    """A random batch for `family` matching `transformer_config` (a model's ``config`` or dict).

    Args:
        num_frames, height, width: latent frames F and latent grid H x W (H, W multiples of the
            patch size).
        text_len, image_len: token counts of ``text_emb`` and ``image_emb``.
        hand_fraction: expected fraction of hand pixels in ``hand_mask``.
    Sample ids are ``"synthetic-<seed>-<i>"``; ``draw`` is zeros.
    """
    check_family(family)
    cfg = dict(transformer_config)
    for name, v in (("batch_size", batch_size), ("num_frames", num_frames), ("height", height), ("width", width)):
        if not (isinstance(v, int) and v >= 1):
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if family == "wan-animate" and num_frames < 2:
        raise ValueError("num_frames must be >= 2 for wan-animate (a reference frame plus video frames)")
    g = torch.Generator("cpu").manual_seed(seed)
    in_ch = cfg.get("in_channels", 16)
    C = cfg.get("out_channels") or in_ch
    if family == "wan-animate":
        C = cfg.get("latent_channels") or (in_ch - 4) // 2
    B, F, H, W = batch_size, num_frames, height, width

    def randn(*shape):
        return torch.randn(shape, generator=g).to(device, dtype)

    batch = {
        "x0": randn(B, C, F, H, W),
        "text_emb": randn(B, text_len, cfg.get("text_dim", 4096)),
        "hand_mask": (torch.rand(B, F - 1, H, W, generator=g) < hand_fraction).to(device, dtype),
        "sample_id": [f"synthetic-{seed}-{i}" for i in range(B)],
        "draw": torch.zeros(B, dtype=torch.long, device=device),
    }
    if family == "wan-vace":
        batch["control"] = randn(B, cfg.get("vace_in_channels", 96), F, H, W)
    elif family == "wan-animate":
        batch["cond_latents"] = randn(B, C + 4, F, H, W)
        batch["pose_latents"] = randn(B, C, F - 1, H, W)
        S = cfg.get("motion_encoder_size", 512)
        batch["face_pixels"] = (torch.rand(B, 3, 4 * (F - 1) - 3, S, S, generator=g) * 2 - 1).to(device, dtype)
    elif in_ch > C:
        batch["cond_latents"] = randn(B, in_ch - C, F, H, W)
    if cfg.get("image_dim") is not None:
        batch["image_emb"] = randn(B, image_len, cfg["image_dim"])
    return batch
