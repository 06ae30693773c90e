"""Enlarged hand crops of a candidate video, for the review page: one looping MP4 per candidate
showing the region where the driving pose puts the hands (a fixed box over the whole clip, so the
crop does not swim), scaled up so drawn fingers can be judged."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

CROP_FILE = "hands.mp4"


def hand_box(pose_hands, height: int, width: int, *, margin: float = 0.35):
    """(x0, y0, x1, y1) around every valid pose hand of the clip, or None when the pose shows none."""
    from ipa.hands import valid_hands

    pose_hands = np.asarray(pose_hands)
    ok = valid_hands(pose_hands)
    if not ok.any():
        return None
    pts = pose_hands[ok]
    pts = pts[pts[..., 2] >= 0.3][:, :2]
    lo, hi = pts.min(0), pts.max(0)
    side = float(max((hi - lo).max(), 8.0)) * (1 + 2 * margin)  # square, with room around the fingers
    cx, cy = (lo + hi) / 2
    x0 = int(np.clip(cx - side / 2, 0, max(width - side, 0)))
    y0 = int(np.clip(cy - side / 2, 0, max(height - side, 0)))
    return x0, y0, int(min(width, x0 + side)), int(min(height, y0 + side))


def write_hand_crops(video: Path, pose_hands, out: Path, *, size: int = 192) -> Path | None:
    """Write the crop video of `video` to `out` (skipped when up to date); None without pose hands."""
    from ipa.data.video import decode_video, write_mp4

    out = Path(out)
    if out.is_file() and out.stat().st_mtime >= Path(video).stat().st_mtime:
        return out
    frames, fps = decode_video(video)
    box = hand_box(pose_hands, *frames.shape[1:3])
    if box is None:
        return None
    x0, y0, x1, y1 = box
    scale = size / max(x1 - x0, y1 - y0)
    interp = cv2.INTER_NEAREST if scale >= 4 else cv2.INTER_CUBIC  # tiny crops: show pixels, not blur
    crops = [cv2.resize(f[y0:y1, x0:x1], (round((x1 - x0) * scale), round((y1 - y0) * scale)), interpolation=interp)
             for f in frames]
    return write_mp4(out, np.stack(crops), fps)
