"""Pictures for checking masks at a glance: mask tinted over the frame, hand skeletons on top."""

from __future__ import annotations

import cv2
import numpy as np

# MediaPipe's 21-point hand topology (DWPose uses the same order).
HAND_EDGES = ((0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (5, 9), (9, 10), (10, 11),
              (11, 12), (9, 13), (13, 14), (14, 15), (15, 16), (13, 17), (0, 17), (17, 18), (18, 19), (19, 20))
MASK_COLOR = np.array([255, 64, 64], np.float32)


def draw_frame(rgb: np.ndarray, mask=None, hands=None, min_confidence: float = 0.3) -> np.ndarray:
    """A copy of `rgb` with `mask` `[H, W]` tinted red and `hands` `[NH, 21, 3]` drawn."""
    out = rgb.astype(np.float32)
    if mask is not None:
        m = (np.asarray(mask) > 0)[..., None]
        out = np.where(m, 0.55 * out + 0.45 * MASK_COLOR, out)
    out = np.clip(out, 0, 255).astype(np.uint8)
    if hands is not None:
        thick = max(1, round(min(rgb.shape[:2]) / 240))
        for hand in np.asarray(hands):
            ok = hand[:, 2] >= min_confidence
            pts = np.round(hand[:, :2]).astype(int)
            for a, b in HAND_EDGES:
                if ok[a] and ok[b]:
                    cv2.line(out, tuple(pts[a]), tuple(pts[b]), (40, 220, 40), thick, cv2.LINE_AA)
            for p, good in zip(pts, ok):
                if good:
                    cv2.circle(out, tuple(p), thick + 1, (255, 255, 0), -1, cv2.LINE_AA)
    return out


def draw_clip(frames, masks=None, hands=None) -> np.ndarray:
    """`draw_frame` over a clip `[T, H, W, 3]` with masks `[T, H, W]` and hands `[T, NH, 21, 3]`."""
    return np.stack([draw_frame(f, None if masks is None else masks[t], None if hands is None else hands[t])
                     for t, f in enumerate(frames)])
