"""Sampling with a model and scoring videos against the renderer's ground truth.

Hand-region PSNR / SSIM come from `ipa.eval` (crops around the driving pose's hand keypoints,
resized to `CROP` pixels, per-crop PSNR/SSIM in the variants `ipa.eval.frames` states). Non-hand
PSNR is computed here (ipa.eval has no masked PSNR): the MSE over pixels outside the dilated hand
mask, per frame, then averaged like `ipa.eval.frames.psnr`. Frame 0 is the reference slot and is
evaluated like the others.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from . import task

CROP = 32  # hand crops are ~20 px at 64x64; SSIM's 11x11 window needs >= 11
SAMPLE_STEPS = 10  # Euler steps (shift 3); the demo model is small and smooth enough


def sample_videos(model, conds: list[dict], seeds: list[int], *, steps: int = SAMPLE_STEPS,
                  batch: int = 8, desc: str | None = None) -> list[torch.Tensor]:
    """Latents [48, F, 32, 32] sampled by `ipa.generate.sample` (Euler flow matching), one per
    condition; with `desc`, a progress bar of that name (on stderr)."""
    from tqdm.auto import tqdm

    from ipa.generate import sample

    out = []
    with tqdm(total=len(conds), desc=desc, unit="video", disable=desc is None) as bar:
        for i in range(0, len(conds), batch):
            chunk = conds[i:i + batch]
            cond = {k: torch.stack([c[k] for c in chunk]) for k in ("x0", "control", "text_emb")}
            out += list(sample(model, cond, seeds[i:i + batch], steps=steps).cpu())
            bar.update(len(chunk))
    return out


def hand_scores(video: np.ndarray, cond: dict) -> tuple[float, float]:
    """(hand PSNR, hand SSIM) of `video` against the condition's ground truth, through ipa.eval."""
    from ipa.eval.hands import hand_crops, score_crops

    crops = score_crops(hand_crops(video, cond["video"], cond["hands"], crop_size=CROP))
    return float(np.mean([c.psnr for c in crops])), float(np.mean([c.ssim for c in crops]))


def non_hand_psnr(video: np.ndarray, cond: dict) -> float:
    """PSNR over pixels outside the hand mask (dilated 2 px so anti-aliased edges stay out)."""
    keep = np.stack([cv2.dilate(m, np.ones((5, 5), np.uint8)) == 0 for m in cond["pixel_mask"]])
    diff = video.astype(np.float64) - cond["video"].astype(np.float64)
    mse = np.array([np.mean((d * d)[k]) for d, k in zip(diff, keep)])
    return float(np.mean(10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))))


def hand_error(latents, cond: dict) -> float:
    """Hand-region MSE in pixel space: the selection score (lower is better)."""
    video = task.decode(latents).astype(np.float64)
    m = cond["pixel_mask"].astype(bool)
    return float(np.mean(((video - cond["video"]) ** 2)[m]))


def score(latents, cond: dict) -> dict:
    video = task.decode(latents)
    hp, hs = hand_scores(video, cond)
    return {"hand_psnr": hp, "hand_ssim": hs, "nonhand_psnr": non_hand_psnr(video, cond)}


def mean_scores(rows: list[dict]) -> dict:
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
