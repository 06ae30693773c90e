"""Hand-region metrics: SSIM-Hand / PSNR-Hand on hand crops, and hand plausibility without ground truth.

**Crops.** Hands come from the driving pose's hand keypoints (DWPose 133-point, OpenPose JSON,
MediaPipe 21-point; `load_pose_hands`) or from hands detected in the reference video
(`ipa.hands.HandDetector`). A hand's crop box is the box of its confident keypoints, made square
around its center, grown by `padding` of its side on each side (side * (1 + 2 * padding)), at
least `min_size` pixels. The same box is cut from the generated and the reference frame (zero
padding outside the frame) and both are resized to `crop_size` x `crop_size`; SSIM-Hand and
PSNR-Hand are SSIM and PSNR (variants as in `ipa.eval.frames`) averaged over all crops.

**Plausibility** (hands detected by MediaPipe in the *generated* frames, no ground truth needed):

- `hkc`, hand keypoint confidence: the mean of `Hand.score` over all detected hands. MediaPipe's
  Tasks API does not give per-landmark confidences for hands (landmark visibility/presence are
  unset), only one score per hand, so HKC here is the mean per-hand score (ipa.hands' `Hand.score`)
  over detected hands; frames without hands do not enter it (see `detection_rate`).
- `hkv`, hand keypoint variation (jitter): for each hand track and each three consecutive frames
  where it is detected, the mean over the 21 landmarks of `|p[t+1] - 2 p[t] + p[t-1]|` (pixel
  acceleration) divided by the hand's size at t (diagonal of its landmark box); HKV is the mean
  over all such triples. Constant-velocity motion gives 0; lower is steadier. Tracks follow the
  matched driving-pose hand when poses are given, else the handedness label (highest score per
  label and frame).
- `detection_rate`: with poses, the fraction of confident driving-pose hands matched by a detected
  hand; without, the fraction of frames with at least one detected hand.
- `landmark_distance`: for each matched (pose hand, detected hand) pair, the mean distance between
  detected landmarks and the pose's confident keypoints, divided by the pose hand's size; mean over
  pairs (also in pixels as `landmark_distance_px`). Pose and detected hands are matched one to one
  per frame by the Hungarian algorithm on that distance, pairs above `match_threshold` hand sizes
  left unmatched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Keypoint readers live in ipa.hands (the room to the left); the names below are eval's own.
from ipa.hands.keypoints import find_pose_file  # noqa: F401  (re-exported for the runner)
from ipa.hands.keypoints import hands_from_detections as detections_to_hands  # noqa: F401  (re-exported)
from ipa.hands.keypoints import load_keypoints
from ipa.hands.keypoints import to_pixels  # noqa: F401  (re-exported for the runner)


def load_pose_hands(path, arg: str = "poses") -> np.ndarray:
    """Driving-pose hand keypoints `[T, NH, 21, 3]` (`ipa.hands.load_keypoints`; errors name `arg`)."""
    return load_keypoints(path, arg)


# ----------------------------------------------------------------------------- boxes and crops

def valid_points(hand: np.ndarray, min_confidence: float = 0.3) -> np.ndarray:
    return hand[:, 2] >= min_confidence


def hand_size(points_xy: np.ndarray) -> float:
    """Diagonal of the points' bounding box (pixels)."""
    ext = points_xy.max(0) - points_xy.min(0)
    return float(np.hypot(*ext))


def hand_box(hand, padding: float = 0.25, min_confidence: float = 0.3, min_points: int = 5,
             min_size: float = 16.0):
    """Square crop box `(x0, y0, x1, y1)` (float pixels) of one hand `[21, 3]`, or None when
    fewer than `min_points` keypoints reach `min_confidence`."""
    hand = np.asarray(hand, dtype=np.float64)
    if hand.shape != (21, 3):
        raise ValueError(f"hand: expected [21, 3] keypoints (x, y, confidence), got {list(hand.shape)}")
    ok = valid_points(hand, min_confidence)
    if ok.sum() < min_points:
        return None
    pts = hand[ok, :2]
    lo, hi = pts.min(0), pts.max(0)
    c = (lo + hi) / 2
    side = max(float((hi - lo).max()) * (1 + 2 * padding), float(min_size))
    return (c[0] - side / 2, c[1] - side / 2, c[0] + side / 2, c[1] + side / 2)


def crop(image: np.ndarray, box, size: int = 128) -> np.ndarray:
    """Cut `box` out of `image` `[H, W, 3]` (zeros outside the frame), resized to `size` x `size`."""
    import cv2

    x0, y0, x1, y1 = (int(round(v)) for v in box)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box: empty box {box!r}")
    h, w = image.shape[:2]
    out = np.zeros((y1 - y0, x1 - x0, image.shape[2]), dtype=image.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    interp = cv2.INTER_AREA if out.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(out, (size, size), interpolation=interp)


@dataclass
class HandCrop:
    frame: int  # index among the evaluated frames
    hand: int  # index of the hand in that frame's keypoints
    box: tuple
    generated: np.ndarray  # [S, S, 3] uint8
    reference: np.ndarray
    ssim: float = float("nan")
    psnr: float = float("nan")


def hand_crops(generated, reference, hands, crop_size: int = 128, padding: float = 0.25,
               min_confidence: float = 0.3, min_points: int = 5) -> list[HandCrop]:
    """Crops of every confident hand of `hands` `[T, NH, 21, 3]` from both videos `[T, H, W, 3]`."""
    from .frames import _pair

    g, r = _pair(generated, reference)
    hands = np.asarray(hands, dtype=np.float64)
    if hands.ndim != 4 or hands.shape[2:] != (21, 3):
        raise ValueError(f"poses: expected hand keypoints [T, hands, 21, 3], got {list(hands.shape)}")
    if len(hands) != len(g):
        raise ValueError(f"poses: {len(hands)} frames of keypoints for a {len(g)}-frame video")
    out = []
    for t in range(len(g)):
        for i, hand in enumerate(hands[t]):
            box = hand_box(hand, padding, min_confidence, min_points)
            if box is not None:
                out.append(HandCrop(t, i, box, crop(g[t], box, crop_size), crop(r[t], box, crop_size)))
    return out


def score_crops(crops: list[HandCrop]) -> list[HandCrop]:
    """Fill in SSIM and PSNR of each crop (generated vs reference)."""
    from .frames import psnr, ssim

    if crops:
        g = np.stack([c.generated for c in crops])
        r = np.stack([c.reference for c in crops])
        for c, s, p in zip(crops, ssim(g, r), psnr(g, r)):
            c.ssim, c.psnr = float(s), float(p)
    return crops


# ----------------------------------------------------------------------------- plausibility

def _landmarks(h) -> np.ndarray:
    lm = np.asarray(h.landmarks, dtype=np.float64)
    if lm.shape[0] != 21 or lm.ndim != 2 or lm.shape[1] < 2:
        raise ValueError(f"detections: expected hands with landmarks [21, 2], got {list(lm.shape)}")
    return lm[:, :2]


def match_hands(detected, pose_hands, min_confidence: float = 0.3, min_points: int = 5,
                threshold: float = 1.0):
    """Match one frame's detected hands to its pose hands `[NH, 21, 3]`.

    Returns (pairs, n_valid_pose_hands) with pairs `(pose_index, detected_index, dist_norm, dist_px)`.
    """
    from scipy.optimize import linear_sum_assignment

    valid = [i for i, h in enumerate(pose_hands) if valid_points(h, min_confidence).sum() >= min_points]
    if not valid or not detected:
        return [], len(valid)
    cost = np.zeros((len(valid), len(detected)))
    px = np.zeros_like(cost)
    for a, i in enumerate(valid):
        ok = valid_points(pose_hands[i], min_confidence)
        ref = pose_hands[i][ok, :2]
        size = max(hand_size(ref), 1e-6)
        for b, h in enumerate(detected):
            d = float(np.linalg.norm(_landmarks(h)[ok] - ref, axis=1).mean())
            px[a, b], cost[a, b] = d, d / size
    rows, cols = linear_sum_assignment(cost)
    pairs = [(valid[a], b, float(cost[a, b]), float(px[a, b])) for a, b in zip(rows, cols) if cost[a, b] <= threshold]
    return pairs, len(valid)


def hand_plausibility(detections, pose_hands=None, min_confidence: float = 0.3, min_points: int = 5,
                      match_threshold: float = 1.0) -> dict:
    """HKC, HKV, detection rate and landmark distance (see the module docstring) for one video.

    `detections`: per frame, a list of hands with `landmarks` `[21, 2]`, `score`, `handedness`
    (`ipa.hands.Hand`). `pose_hands`: optional driving-pose keypoints `[T, NH, 21, 3]`.
    Returns sums and counts as well as means so that videos can be pooled (`pool_plausibility`).
    """
    T = len(detections)
    if pose_hands is not None and len(pose_hands) != T:
        raise ValueError(f"poses: {len(pose_hands)} frames of keypoints for {T} frames of detections")
    scores = [float(h.score) for frame in detections for h in frame]
    tracks: list[dict] = []  # per frame: track id -> landmarks
    dist_norm, dist_px, n_pose, n_matched = [], [], 0, 0
    for t, frame in enumerate(detections):
        ids = {}
        if pose_hands is not None:
            pairs, nv = match_hands(frame, pose_hands[t], min_confidence, min_points, match_threshold)
            n_pose += nv
            n_matched += len(pairs)
            for pi, di, dn, dp in pairs:
                dist_norm.append(dn)
                dist_px.append(dp)
                ids[f"pose{pi}"] = _landmarks(frame[di])
        else:
            best = {}
            for h in frame:
                key = str(getattr(h, "handedness", ""))
                if key not in best or h.score > best[key].score:
                    best[key] = h
            ids = {k: _landmarks(h) for k, h in best.items()}
        tracks.append(ids)
    jitter = []
    for t in range(1, T - 1):
        for k, p in tracks[t].items():
            if k in tracks[t - 1] and k in tracks[t + 1]:
                acc = np.linalg.norm(tracks[t + 1][k] - 2 * p + tracks[t - 1][k], axis=1).mean()
                jitter.append(acc / max(hand_size(p), 1e-6))
    frames_with = sum(1 for f in detections if len(f) > 0)
    return {
        "hkc_sum": float(sum(scores)), "hands_detected": len(scores),
        "hkv_sum": float(sum(jitter)), "hkv_count": len(jitter),
        "frames": T, "frames_with_hands": frames_with,
        "pose_hands": n_pose, "pose_hands_matched": n_matched,
        "landmark_distance_sum": float(sum(dist_norm)), "landmark_distance_px_sum": float(sum(dist_px)),
        "with_poses": pose_hands is not None,
        **_means(len(scores), sum(scores), len(jitter), sum(jitter), T, frames_with, n_pose, n_matched,
                 sum(dist_norm), sum(dist_px), pose_hands is not None),
    }


def _means(nh, hkc_sum, nj, hkv_sum, T, frames_with, n_pose, n_matched, dn_sum, dp_sum, with_poses):
    nan = float("nan")
    return {
        "hkc": hkc_sum / nh if nh else nan,
        "hkv": hkv_sum / nj if nj else nan,
        "detection_rate": (n_matched / n_pose if n_pose else nan) if with_poses else (frames_with / T if T else nan),
        "landmark_distance": dn_sum / n_matched if n_matched else nan,
        "landmark_distance_px": dp_sum / n_matched if n_matched else nan,
    }


def pool_plausibility(per_video: list[dict]) -> dict:
    """Pool `hand_plausibility` results of several videos (sums over videos, then means)."""
    s = {k: sum(v[k] for v in per_video) for k in ("hkc_sum", "hands_detected", "hkv_sum", "hkv_count", "frames",
                                                   "frames_with_hands", "pose_hands", "pose_hands_matched",
                                                   "landmark_distance_sum", "landmark_distance_px_sum")}
    with_poses = bool(per_video) and all(v["with_poses"] for v in per_video)
    return _means(s["hands_detected"], s["hkc_sum"], s["hkv_count"], s["hkv_sum"], s["frames"],
                  s["frames_with_hands"], s["pose_hands"], s["pose_hands_matched"],
                  s["landmark_distance_sum"], s["landmark_distance_px_sum"], with_poses)
