"""Pixel hand masks from keypoints: a convex hull or a padded box per hand, grown by a margin
relative to the hand's size, rasterized with OpenCV."""

from __future__ import annotations

import cv2
import numpy as np

from .keypoints import MIN_CONFIDENCE, MIN_POINTS, valid_hands

SHAPES = ("hull", "box")


def parse_size(size) -> tuple[int, int]:
    """`(H, W)` from a pair or an `"HxW"` string; ValueError naming `size` otherwise."""
    if isinstance(size, str):
        parts = size.lower().split("x")
        if len(parts) != 2 or not all(p.strip().lstrip("-").isdigit() for p in parts):
            raise ValueError(f"size must look like HxW (e.g. 480x832), got {size!r}")
        size = tuple(int(p) for p in parts)
    if len(size) != 2 or any(int(v) <= 0 for v in size):
        raise ValueError(f"size must be two positive integers (H, W), got {size!r}")
    return int(size[0]), int(size[1])


def hand_size(points_xy: np.ndarray) -> float:
    """The larger side of the points' bounding box, in pixels (the scale the margin refers to)."""
    ext = points_xy.max(0) - points_xy.min(0)
    return float(max(ext.max(), 1.0))


def draw_hand(mask: np.ndarray, points_xy: np.ndarray, *, shape: str = "hull", margin: float = 0.15) -> None:
    """Paint one hand (confident points `[n, 2]`, pixels) into `mask` `[H, W]` uint8, in place."""
    grow = int(round(margin * hand_size(points_xy)))
    if shape == "box":
        lo = np.floor(points_xy.min(0)).astype(int) - grow
        hi = np.ceil(points_xy.max(0)).astype(int) + grow
        cv2.rectangle(mask, (int(lo[0]), int(lo[1])), (int(hi[0]), int(hi[1])), 1, thickness=-1)
        return
    hull = cv2.convexHull(np.round(points_xy).astype(np.int32))
    if grow <= 0:
        cv2.fillConvexPoly(mask, hull, 1)
        return
    # Dilate only around this hand: a disc of radius `grow` (hull edges drawn that thick) keeps the
    # cost proportional to the hand, not the frame.
    cv2.fillConvexPoly(mask, hull, 1)
    cv2.polylines(mask, [hull], isClosed=True, color=1, thickness=2 * grow + 1, lineType=cv2.LINE_8)


def hand_masks(hands, size, *, shape: str = "hull", margin: float = 0.15,
               min_confidence: float = MIN_CONFIDENCE, min_points: int = MIN_POINTS) -> np.ndarray:
    """uint8 `[T, H, W]` (0/1) masks of the valid hands in `hands` `[T, NH, 21, 3]`.

    `shape`: "hull" (convex hull of the confident points) or "box" (their bounding box); either
    grown by `margin` times the hand's size (larger side of its box) on every side.
    """
    H, W = parse_size(size)
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    if not (isinstance(margin, (int, float)) and margin >= 0):
        raise ValueError(f"margin must be a number >= 0 (fraction of the hand size), got {margin!r}")
    hands = np.asarray(hands, dtype=np.float64)
    ok = valid_hands(hands, min_confidence, min_points)
    masks = np.zeros((hands.shape[0], H, W), np.uint8)
    for t, i in zip(*np.nonzero(ok)):
        pts = hands[t, i]
        draw_hand(masks[t], pts[pts[:, 2] >= min_confidence, :2], shape=shape, margin=margin)
    return masks
