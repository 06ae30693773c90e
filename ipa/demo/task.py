"""The demo's pose-driven animation task: conditions, ground truth, hand masks, latent space.

**Condition.** A keypoint sequence (`motion`): body sway, two arms and a right hand whose five
fingers curl and spread along random smooth (sinusoidal) trajectories; seeded, so condition
`i` is always the same clip. `FRAMES = 9` frames of 64x64 pixels (4k + 1 with k = 2).

**Latent space (VAE-free, exact).** Wan's causal layout with a 2x2 instead of 8x8 spatial
stride: latent frame 0 holds pixel frame 0 (repeated 4x, as a causal VAE sees it alone),
latent frame j >= 1 holds pixel frames 4j-3 .. 4j. Each latent cell gathers its 4 frames x 2x2
pixels x RGB = 48 values (in [-1, 1]) and rotates them by a fixed random orthogonal 48x48 matrix
`Q` (seed 0). So `C = 48` channels on a 32x32 grid x 3 latent frames, and
`decode(encode(video)) == video` (frame 0: the mean of its 4 copies, which is exact on encoded
videos and the least-squares choice on generated ones). No VAE, no download, negligible cost.

**VACE control** (the batch contract of `ipa.models.inputs`, scaled to this map):
`[inactive (C) | reactive (C) | mask (4)]` = 100 channels: inactive = encode(zero video) = 0,
reactive = encode(pose video), mask = ones (pose control: m = 1 everywhere), the pixel mask
unfolded 2x2 as Wan unfolds it 8x8.

**Hand mask.** `ipa.hands.hand_masks` (hull of the 21 hand keypoints, grown 15%) then
`ipa.hands.halo_mask` with this map's 2x2 / 4x strides: `[F-1, 32, 32]`.
"""

from __future__ import annotations

import numpy as np
import torch

from . import render

FRAMES = 9
STRIDE = 2  # latent cell side in pixels
TSTRIDE = 4
CHANNELS = 4 * STRIDE * STRIDE * 3  # 48
TEXT_TOKENS, TEXT_DIM = 4, 32

MODEL_CONFIG = {  # WanVACETransformer3DModel constructor arguments (tiny, CPU-sized)
    # width 6 x 32 = 192 = the 2x2 patch's 4 x 48 outputs: the transformer's only path from input to
    # output is its residual stream, so a narrower one cannot carry the noise it has to remove (at
    # 4 x 16 = 64 wide, two thirds of the initial noise survive sampling untouched).
    "patch_size": [1, 2, 2], "num_attention_heads": 6, "attention_head_dim": 32, "in_channels": CHANNELS,
    "out_channels": CHANNELS, "text_dim": TEXT_DIM, "freq_dim": 64, "ffn_dim": 384, "num_layers": 4,
    "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 32,
    "vace_layers": [0, 2], "vace_in_channels": 2 * CHANNELS + STRIDE * STRIDE,
}


def _orthogonal(n: int, seed: int = 0) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return q * np.sign(np.diag(r))  # unique QR sign convention: same Q on every platform


Q = torch.from_numpy(_orthogonal(CHANNELS)).float()


# ----------------------------------------------------------------------------- latent map

def encode(video) -> torch.Tensor:
    """uint8 video [T = 4k+1, H, W, 3] -> latents float32 [48, k+1, H/2, W/2]."""
    v = torch.as_tensor(np.asarray(video)).float() / 127.5 - 1.0
    T, H, W, _ = v.shape
    if (T - 1) % TSTRIDE or H % STRIDE or W % STRIDE:
        raise ValueError(f"video must be [4k+1, H, W, 3] with H, W even, got {list(v.shape)}")
    groups = torch.cat([v[:1].expand(TSTRIDE, -1, -1, -1), v[1:]]).reshape(-1, TSTRIDE, H, W, 3)
    g = groups.reshape(-1, TSTRIDE, H // STRIDE, STRIDE, W // STRIDE, STRIDE, 3)
    # cell vector ordered (frame, dy, dx, rgb)
    cells = g.permute(0, 2, 4, 1, 3, 5, 6).reshape(g.shape[0], H // STRIDE, W // STRIDE, CHANNELS)
    return (cells @ Q.T).permute(3, 0, 1, 2).contiguous()


def decode(latents) -> np.ndarray:
    """latents [48, F, h, w] -> uint8 video [4(F-1)+1, 2h, 2w, 3] (exact inverse of `encode`)."""
    z = torch.as_tensor(latents).float().cpu()
    C, F, h, w = z.shape
    if C != CHANNELS:
        raise ValueError(f"latents must have {CHANNELS} channels, got {list(z.shape)}")
    cells = z.permute(1, 2, 3, 0) @ Q  # Q orthogonal: inverse = transpose
    g = cells.reshape(F, h, w, TSTRIDE, STRIDE, STRIDE, 3).permute(0, 3, 1, 4, 2, 5, 6)
    frames = g.reshape(F, TSTRIDE, h * STRIDE, w * STRIDE, 3)
    video = torch.cat([frames[:1].mean(1), frames[1:].reshape(-1, h * STRIDE, w * STRIDE, 3)])
    return ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def control_from_pose(pose_video) -> torch.Tensor:
    """The VACE context [100, F, h, w] of a pose video (see the module docstring)."""
    reactive = encode(pose_video)
    ones = torch.ones((STRIDE * STRIDE,) + reactive.shape[1:])
    return torch.cat([torch.zeros_like(reactive), reactive, ones])


def text_embedding() -> torch.Tensor:
    """The one prompt of the task ("a person waving a gloved hand"), a fixed random [4, 32]."""
    return torch.randn(TEXT_TOKENS, TEXT_DIM, generator=torch.Generator().manual_seed(1234))


# ----------------------------------------------------------------------------- motion

def _wave(rng, T, base, amp, lo=None, hi=None):
    f = rng.uniform(0.3, 1.0)  # cycles per clip: smooth at 9 frames
    ph = rng.uniform(0, 2 * np.pi)
    x = base + amp * np.sin(2 * np.pi * f * np.arange(T) / T + ph)
    return x if lo is None else np.clip(x, lo, hi)


def _rot(deg):
    a = np.deg2rad(deg)
    return np.stack([np.cos(a), np.sin(a)], -1)


def _poses(rng, T) -> list[render.Pose]:
    cx = _wave(rng, T, rng.uniform(27, 33), rng.uniform(0, 2))
    sway = _wave(rng, T, 0, rng.uniform(0, 2))
    th1 = _wave(rng, T, rng.uniform(-75, -15), rng.uniform(5, 20))  # upper arm, degrees (0 = +x, <0 up)
    bend = _wave(rng, T, rng.uniform(-60, -10), rng.uniform(5, 25), -90, 0)
    wrist_bend = _wave(rng, T, rng.uniform(-20, 20), rng.uniform(0, 20))
    lth1 = _wave(rng, T, rng.uniform(100, 150), rng.uniform(5, 20))  # left arm hangs / lifts
    lbend = _wave(rng, T, rng.uniform(0, 50), rng.uniform(5, 20))
    spread = _wave(rng, T, rng.uniform(0.3, 1.0), 0.3, 0.0, 1.2)
    curls = [_wave(rng, T, rng.uniform(0.0, 0.8), rng.uniform(0.2, 0.6), 0.0, 1.0) for _ in range(5)]
    poses = []
    for t in range(T):
        neck = np.array([cx[t], 31.0])
        body = {"neck": neck, "head": neck + [sway[t], -9.0], "pelvis": np.array([cx[t], 66.0]),
                "r_shoulder": neck + [8.0, 1.0], "l_shoulder": neck + [-8.0, 1.0]}
        body["r_elbow"] = body["r_shoulder"] + 10 * _rot(th1[t])
        body["r_wrist"] = body["r_elbow"] + 9 * _rot(th1[t] + bend[t])
        body["l_elbow"] = body["l_shoulder"] + 10 * _rot(lth1[t])
        body["l_wrist"] = body["l_elbow"] + 9 * _rot(lth1[t] + lbend[t])
        poses.append(render.Pose(body, _hand(body["r_wrist"], th1[t] + bend[t] + wrist_bend[t], spread[t],
                                             [c[t] for c in curls])))
    return poses


def _hand(wrist, phi, spread, curls) -> np.ndarray:
    """21 keypoints of a hand pointing at angle `phi` (degrees); `curls` in [0, 1] per finger."""
    h = np.zeros((21, 2))
    h[0] = wrist
    knuckle_at = [-30, -12, 2, 16]  # index..little knuckles around the palm direction
    fan = np.array([-12, -4, 4, 12]) * spread
    for n, (off, f) in enumerate(zip(knuckle_at, fan)):
        base = 1 + 4 * (n + 1)
        h[base] = wrist + 5.5 * _rot(phi + off * 0.6)
        ang = phi + f
        for k, seg in enumerate((3.8, 3.0, 2.6)):
            ang = ang + 55 * curls[n + 1] * (1 if k else 0.6)
            h[base + k + 1] = h[base + k] + seg * _rot(ang)
    h[1] = wrist + 2.5 * _rot(phi - 55)  # thumb
    ang = phi - 50 - 25 * spread
    for k, seg in enumerate((3.2, 2.8, 2.4)):
        ang = ang + 45 * curls[0]
        h[2 + k] = h[1 + k] + seg * _rot(ang)
    return h


def motion(seed: int, frames: int = FRAMES) -> list[render.Pose]:
    """The keypoint sequence of condition `seed`: the first draw keeping the hand inside the frame."""
    rng = np.random.default_rng([seed, 7])
    while True:
        poses = _poses(rng, frames)
        hands = np.stack([p.hand for p in poses])
        if hands.min() >= 2 and hands.max() <= render.SIZE - 2:
            return poses


# ----------------------------------------------------------------------------- conditions

def condition(seed: int) -> dict:
    """Everything about condition `seed`: poses, videos, masks and the training-sample tensors.

    Keys: ``poses``, ``video`` / ``pose_video`` (uint8 [T, 64, 64, 3]), ``hands`` ([T, 1, 21, 3]),
    ``pixel_mask`` (uint8 [T, 64, 64]), and the batch-contract tensors ``x0`` [48, 3, 32, 32],
    ``control`` [100, 3, 32, 32], ``text_emb`` [4, 32], ``hand_mask`` [2, 32, 32].
    """
    from ipa.hands import halo_mask, hand_masks

    poses = motion(seed)
    video, pose_video = render.render_video(poses)
    hands = render.hand_keypoints(poses)
    pixel_mask = hand_masks(hands, (render.SIZE, render.SIZE))
    return {
        "poses": poses, "video": video, "pose_video": pose_video, "hands": hands, "pixel_mask": pixel_mask,
        "x0": encode(video), "control": control_from_pose(pose_video), "text_emb": text_embedding(),
        "hand_mask": torch.from_numpy(halo_mask(pixel_mask, STRIDE, TSTRIDE).astype(np.float32)),
    }


def sample_tensors(cond: dict, x0=None) -> dict:
    """The shard sample of a condition (ipa.data format), with `x0` replaced when given."""
    return {"x0": cond["x0"] if x0 is None else x0, "control": cond["control"],
            "text_emb": cond["text_emb"], "hand_mask": cond["hand_mask"]}
