"""Whole-body pose keypoints -> the skeleton video VACE is conditioned on, drawn as DWPose does.

`load_pose` reads a clip's keypoints into one layout: `Pose(body [T, P, 18, 3], hands
[T, NH, 21, 3], face [T, P, F, 3])`, pixel x, y and confidence, body in OpenPose's 18-point order.
Hands come from `ipa.hands.load_keypoints` (one parser for every hand format); body and face are
read here from DWPose/RTMW 133-point arrays (COCO-WholeBody order: 0-16 body, 17-22 feet, 23-90
face, 91-132 hands) and OpenPose-style JSON (`pose_keypoints_2d` in COCO-18 or BODY_25 order,
`face_keypoints_2d`). Hand-only files (21 points) give an empty body and face.

`draw_pose` follows DWPose's `util.draw_bodypose` / `draw_handpose` / `draw_facepose` (the
ControlNet annotator the Wan/VACE pose conditions come from): limb ellipses of width 4 in 17
colours, the canvas dimmed to 60 %, joint discs of radius 4; hand bones in an HSV rainbow with
blue joints; face points as small white discs. Points under `min_confidence` (0.3, as DWPose)
are not drawn.
"""

from __future__ import annotations

import colorsys
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

MIN_CONFIDENCE = 0.3

# OpenPose-18 limbs (1-based, as DWPose writes them) and their colours (RGB).
LIMBS = [[2, 3], [2, 6], [3, 4], [4, 5], [6, 7], [7, 8], [2, 9], [9, 10], [10, 11], [2, 12], [12, 13],
         [13, 14], [2, 1], [1, 15], [15, 17], [1, 16], [16, 18], [3, 17], [6, 18]]
COLORS = [[255, 0, 0], [255, 85, 0], [255, 170, 0], [255, 255, 0], [170, 255, 0], [85, 255, 0], [0, 255, 0],
          [0, 255, 85], [0, 255, 170], [0, 255, 255], [0, 170, 255], [0, 85, 255], [0, 0, 255], [85, 0, 255],
          [170, 0, 255], [255, 0, 255], [255, 0, 170], [255, 0, 85]]
HAND_EDGES = [[0, 1], [1, 2], [2, 3], [3, 4], [0, 5], [5, 6], [6, 7], [7, 8], [0, 9], [9, 10], [10, 11],
              [11, 12], [0, 13], [13, 14], [14, 15], [15, 16], [0, 17], [17, 18], [18, 19], [19, 20]]
HAND_COLORS = [tuple(int(c * 255) for c in colorsys.hsv_to_rgb(i / len(HAND_EDGES), 1.0, 1.0))
               for i in range(len(HAND_EDGES))]

# COCO-17 (mmpose) -> OpenPose-18, as DWPose's wholebody.py reorders after inserting the neck.
_OPENPOSE_FROM_COCO = [0, 17, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3]
_OPENPOSE_FROM_BODY25 = [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18]


@dataclass
class Pose:
    """One clip's keypoints (pixel x, y, confidence)."""

    body: np.ndarray   # [T, P, 18, 3]
    hands: np.ndarray  # [T, NH, 21, 3]
    face: np.ndarray   # [T, P, F, 3]

    def __len__(self):
        return len(self.hands)

    def map(self, fn) -> "Pose":
        """A copy with `fn` applied to every `[..., 2]` xy array (e.g. a crop's `points`)."""
        def go(a):
            a = a.copy()
            a[..., :2] = fn(a[..., :2])
            return a
        return Pose(go(self.body), go(self.hands), go(self.face))

    def take(self, idx) -> "Pose":
        return Pose(self.body[idx], self.hands[idx], self.face[idx])

    def is_normalized(self) -> bool:
        """DWPose's [0, 1] coordinates (`ipa.hands.is_normalized`), judged on body, hands and face."""
        from ipa.hands import is_normalized

        points = np.concatenate([a.reshape(-1, 3) for a in (self.body, self.hands, self.face)])
        return is_normalized(points, MIN_CONFIDENCE)


def _body_from_wholebody(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[T, P, 133, 3] -> (body [T, P, 18, 3] OpenPose order, face [T, P, 68, 3])."""
    neck = a[:, :, [5, 6]].mean(2, keepdims=True)
    neck[..., 2] = a[:, :, [5, 6], 2].min(2, keepdims=True)  # the neck is as sure as its weaker shoulder
    coco = np.concatenate([a[:, :, :17], neck], axis=2)
    return coco[:, :, _OPENPOSE_FROM_COCO], a[:, :, 23:91]


def _openpose_people(frame: dict, where: str) -> tuple[list, list]:
    bodies, faces = [], []
    for person in frame.get("people", []):
        b = np.asarray(person.get("pose_keypoints_2d") or np.zeros(54), dtype=np.float64)
        if b.size == 75:
            b = b.reshape(25, 3)[_OPENPOSE_FROM_BODY25]
        elif b.size == 54:
            b = b.reshape(18, 3)
        else:
            raise ValueError(f"{where}: pose_keypoints_2d must hold 18 or 25 points (x, y, c), got {b.size} numbers")
        f = np.asarray(person.get("face_keypoints_2d") or np.zeros(210), dtype=np.float64)
        if f.size % 3:
            raise ValueError(f"{where}: face_keypoints_2d must hold (x, y, c) triples, got {f.size} numbers")
        bodies.append(b)
        faces.append(f.reshape(-1, 3))
    return bodies, faces


def _stack(per_frame: list[list[np.ndarray]], points: int) -> np.ndarray:
    n = max([len(f) for f in per_frame] + [1])
    pts = max([p.shape[0] for f in per_frame for p in f] + [points])
    out = np.zeros((len(per_frame), n, pts, 3))
    for t, f in enumerate(per_frame):
        for i, p in enumerate(f):
            out[t, i, :len(p)] = p
    return out


def load_pose(path) -> Pose:
    """A clip's keypoints from a `.npy`/`.npz`/`.json` file or a folder of per-frame JSON files."""
    from ipa.hands import load_keypoints

    path = Path(path)
    hands = load_keypoints(path, arg=f"keypoints {str(path)!r}")
    T = len(hands)
    empty = Pose(np.zeros((T, 1, 18, 3)), hands, np.zeros((T, 1, 68, 3)))
    if path.is_dir() or path.suffix.lower() == ".json":
        if path.is_dir():
            frames = [(json.loads(f.read_text()), str(f)) for f in sorted(path.glob("*.json"))]
        else:
            data = json.loads(path.read_text())
            data = data["frames"] if isinstance(data, dict) and "frames" in data else data
            if not (isinstance(data, list) and data and isinstance(data[0], dict)):
                return empty  # a numeric array in JSON: hands only
            frames = [(f, f"{path} frame {t}") for t, f in enumerate(data)]
        people = [_openpose_people(f, where) for f, where in frames]
        return Pose(_stack([b for b, _ in people], 18), hands, _stack([f for _, f in people], 68))
    a = np.load(path)
    if isinstance(a, np.lib.npyio.NpzFile):
        a = a["keypoints"] if "keypoints" in a else a[a.files[0]]
    a = np.asarray(a, dtype=np.float64)
    if a.shape[-2] != 133:
        return empty
    if a.shape[-1] == 2:
        a = np.concatenate([a, np.ones(a.shape[:-1] + (1,))], axis=-1)
    body, face = _body_from_wholebody(a[:, None] if a.ndim == 3 else a)
    return Pose(body, hands, face)


def draw_pose(pose: Pose, t: int, height: int, width: int, *, min_confidence: float = MIN_CONFIDENCE) -> np.ndarray:
    """Frame `t` of `pose` (pixel coordinates) drawn on black, RGB uint8 `[height, width, 3]`."""
    canvas = np.zeros((height, width, 3), np.uint8)
    body = pose.body[t]
    ok = body[..., 2] >= min_confidence
    for i in range(17):  # DWPose draws the first 17 limbs (the two ear-shoulder links are left out)
        a, b = LIMBS[i][0] - 1, LIMBS[i][1] - 1
        for p in range(len(body)):
            if not (ok[p, a] and ok[p, b]):
                continue
            (x1, y1), (x2, y2) = body[p, a, :2], body[p, b, :2]
            length = float(np.hypot(x1 - x2, y1 - y2))
            angle = int(np.degrees(np.arctan2(y1 - y2, x1 - x2)))
            poly = cv2.ellipse2Poly((int((x1 + x2) / 2), int((y1 + y2) / 2)), (int(length / 2), 4), angle, 0, 360, 1)
            cv2.fillConvexPoly(canvas, poly, COLORS[i])
    canvas = (canvas * 0.6).astype(np.uint8)  # limbs dimmed, joints full colour: DWPose's look
    for i in range(18):
        for p in range(len(body)):
            if ok[p, i]:
                cv2.circle(canvas, (int(body[p, i, 0]), int(body[p, i, 1])), 4, COLORS[i], thickness=-1)
    for hand in pose.hands[t]:
        vis = hand[:, 2] >= min_confidence
        for e, (a, b) in enumerate(HAND_EDGES):
            if vis[a] and vis[b]:
                cv2.line(canvas, (int(hand[a, 0]), int(hand[a, 1])), (int(hand[b, 0]), int(hand[b, 1])),
                         HAND_COLORS[e], thickness=2)
        for x, y, _ in hand[vis]:
            cv2.circle(canvas, (int(x), int(y)), 4, (0, 0, 255), thickness=-1)
    for face in pose.face[t]:
        for x, y, _ in face[face[:, 2] >= min_confidence]:
            cv2.circle(canvas, (int(x), int(y)), 3, (255, 255, 255), thickness=-1)
    return canvas


def render_pose_video(pose: Pose, height: int, width: int, **kw) -> np.ndarray:
    """Every frame of `pose` drawn: RGB uint8 `[T, height, width, 3]`."""
    return np.stack([draw_pose(pose, t, height, width, **kw) for t in range(len(pose))])
