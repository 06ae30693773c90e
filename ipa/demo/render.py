"""A procedurally rendered figure that follows a keypoint sequence (the demo's "camera").

The figure is an upper body seen from the front: head, torso, two arms, and a right hand in a
glove whose five fingers have distinct colours (so a misplaced finger costs hand-region PSNR).
`Pose` holds one frame's keypoints; `render_frame` draws the figure (ground truth) and
`render_pose` the skeleton the model is conditioned on, drawn DWPose-style (thin coloured limbs,
rainbow finger bones on black). Everything is deterministic: same keypoints, same pixels.

Hand keypoints use the MediaPipe / DWPose 21-point order (0 wrist, 1-4 thumb, 5-8 index,
9-12 middle, 13-16 ring, 17-20 little), so `ipa.hands` and `ipa.eval` read them directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

SIZE = 64  # frame side in pixels

BACKGROUND_TOP = np.array([205, 215, 230], np.float64)  # soft vertical gradient (RGB)
BACKGROUND_BOTTOM = np.array([150, 165, 185], np.float64)
SKIN = (224, 172, 140)
SHIRT = (40, 90, 160)
SLEEVE = (60, 120, 190)
HAIR = (60, 40, 30)
GLOVE = (240, 240, 240)
FINGER_COLORS = [(230, 40, 40), (240, 170, 20), (40, 170, 60), (30, 110, 230), (170, 50, 200)]  # thumb..little

# DWPose-style skeleton colours (RGB) for the pose video.
BODY_BONES = [("neck", "head", (255, 0, 85)), ("neck", "r_shoulder", (255, 85, 0)),
              ("r_shoulder", "r_elbow", (255, 170, 0)), ("r_elbow", "r_wrist", (255, 255, 0)),
              ("neck", "l_shoulder", (85, 255, 0)), ("l_shoulder", "l_elbow", (0, 255, 0)),
              ("l_elbow", "l_wrist", (0, 255, 85)), ("neck", "pelvis", (0, 170, 255))]
BODY_JOINTS = ("head", "neck", "pelvis", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist")
FINGERS = [(1, 2, 3, 4), (5, 6, 7, 8), (9, 10, 11, 12), (13, 14, 15, 16), (17, 18, 19, 20)]


@dataclass
class Pose:
    """One frame's keypoints in pixels: `body` {joint name: (x, y)} and `hand` [21, 2]."""
    body: dict
    hand: np.ndarray


def _pt(p) -> tuple[int, int]:
    # 4 fractional bits: sub-pixel positions make smooth motion render smoothly
    return int(round(p[0] * 16)), int(round(p[1] * 16))


def _line(img, a, b, color, width):
    cv2.line(img, _pt(a), _pt(b), color, width, lineType=cv2.LINE_AA, shift=4)


def _disc(img, c, r, color):
    cv2.circle(img, _pt(c), int(round(r * 16)), color, -1, lineType=cv2.LINE_AA, shift=4)


def background(size: int = SIZE) -> np.ndarray:
    """The static backdrop, uint8 [size, size, 3]."""
    a = np.linspace(0.0, 1.0, size)[:, None, None]
    rows = (1 - a) * BACKGROUND_TOP + a * BACKGROUND_BOTTOM
    return np.broadcast_to(rows, (size, size, 3)).round().astype(np.uint8).copy()


def render_frame(pose: Pose, size: int = SIZE) -> np.ndarray:
    """The figure (ground truth), uint8 RGB [size, size, 3]."""
    img = background(size)
    b = pose.body
    s = size / 64.0
    # torso: a quad from the shoulders to a pelvis twice as narrow
    pel = np.asarray(b["pelvis"], float)
    half = (np.asarray(b["r_shoulder"], float) - np.asarray(b["l_shoulder"], float)) / 2
    torso = np.array([b["l_shoulder"], b["r_shoulder"], pel + half * 0.8, pel - half * 0.8])
    cv2.fillConvexPoly(img, np.array([_pt(p) for p in torso], np.int32), SHIRT, lineType=cv2.LINE_AA, shift=4)
    _line(img, b["neck"], b["head"], SKIN, max(1, int(3 * s)))
    _disc(img, b["head"], 5.5 * s, SKIN)
    _disc(img, np.asarray(b["head"]) + np.array([0, -2.5 * s]), 4.0 * s, HAIR)
    for side in ("l", "r"):
        _line(img, b[f"{side}_shoulder"], b[f"{side}_elbow"], SLEEVE, max(1, int(4 * s)))
        _line(img, b[f"{side}_elbow"], b[f"{side}_wrist"], SKIN, max(1, int(3 * s)))
    _disc(img, b["l_wrist"], 2.2 * s, SKIN)  # the left hand is a plain fist
    h = pose.hand
    palm = h[[0, 1, 5, 9, 13, 17]]
    cv2.fillConvexPoly(img, cv2.convexHull(np.array([_pt(p) for p in palm], np.int32)), GLOVE,
                       lineType=cv2.LINE_AA, shift=4)
    for color, finger in zip(FINGER_COLORS, FINGERS):
        chain = [h[i] for i in finger]  # from the knuckle on the palm to the tip
        for a, c in zip(chain[:-1], chain[1:]):
            _line(img, a, c, color, max(1, int(2 * s)))
    return img


def render_pose(pose: Pose, size: int = SIZE) -> np.ndarray:
    """The skeleton video frame the model is conditioned on, uint8 RGB [size, size, 3] (black ground)."""
    img = np.zeros((size, size, 3), np.uint8)
    b = pose.body
    for a, c, color in BODY_BONES:
        _line(img, b[a], b[c], color, 1)
    for j in BODY_JOINTS:
        _disc(img, b[j], 0.8, (255, 255, 255))
    h = pose.hand
    for n, finger in enumerate(FINGERS):
        chain = [0, *finger]
        for k, (a, c) in enumerate(zip(chain[:-1], chain[1:])):
            hue = int(180 * (n * 4 + k) / 20)  # DWPose colours hand bones along the hue circle
            rgb = cv2.cvtColor(np.uint8([[[hue, 255, 255]]]), cv2.COLOR_HSV2RGB)[0, 0]
            _line(img, h[a], h[c], tuple(int(v) for v in rgb), 1)
    return img


def render_video(poses: list[Pose], size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(ground-truth video, pose video), both uint8 [T, size, size, 3]."""
    return (np.stack([render_frame(p, size) for p in poses]), np.stack([render_pose(p, size) for p in poses]))


def hand_keypoints(poses: list[Pose]) -> np.ndarray:
    """The right hand's keypoints as `ipa.hands` reads them: [T, 1, 21, 3] (x, y, confidence 1)."""
    h = np.stack([p.hand for p in poses])
    return np.concatenate([h, np.ones(h.shape[:-1] + (1,))], axis=-1)[:, None]
