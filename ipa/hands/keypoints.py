"""Hand keypoints in, one layout out: `[T, NH, 21, 3]` = (pixel x, pixel y, confidence) per frame,
hand slot and MediaPipe hand point (0 wrist, 1-4 thumb, 5-8 index, 9-12 middle, 13-16 ring,
17-20 little finger). DWPose/RTMW whole-body keypoints use the same 21-point order for each hand.

Formats read: DWPose/RTMW 133-point whole body (left hand 91-111, right hand 112-132) as
`[T, 133, 3]` or `[T, persons, 133, 3]`; MediaPipe 21-point hands `[T, 21, 3]` or
`[T, hands, 21, 3]`; OpenPose-style JSON as DWPose tools write it (`people[].hand_left_keypoints_2d`
/ `hand_right_keypoints_2d`, flat x, y, c triples), one file per clip or a folder of per-frame
files; detections from `ipa.hands.HandDetector`. A hand counts only where at least `min_points` of
its points reach `min_confidence` (`valid_hands`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

MIN_CONFIDENCE = 0.3  # DWPose's hand scores of visible fingers are usually above 0.5
MIN_POINTS = 5  # enough for a hull with area; fewer confident points is a guess, not a hand

DWPOSE_LEFT = slice(91, 112)
DWPOSE_RIGHT = slice(112, 133)


# ----------------------------------------------------------------------------- keypoints in

def hands_from_array(arr, arg: str = "keypoints") -> np.ndarray:
    """Numeric keypoint array -> `[T, NH, 21, 3]` (x, y, confidence)."""
    a = np.asarray(arr, dtype=np.float64)
    if a.ndim >= 2 and a.shape[-1] == 2:  # no confidence: all confident
        a = np.concatenate([a, np.ones(a.shape[:-1] + (1,))], axis=-1)
    if a.ndim < 3 or a.shape[-1] != 3:
        raise ValueError(f"{arg}: expected keypoints with (x, y[, confidence]) last, got shape {list(a.shape)}")
    k = a.shape[-2]
    if k == 133:  # DWPose / RTMW whole body: [T, 133, 3] or [T, P, 133, 3]
        if a.ndim == 3:
            a = a[:, None]
        if a.ndim != 4:
            raise ValueError(f"{arg}: expected [T, 133, 3] or [T, persons, 133, 3], got {list(a.shape)}")
        return np.stack([a[:, :, DWPOSE_LEFT], a[:, :, DWPOSE_RIGHT]], axis=2).reshape(len(a), -1, 21, 3)
    if k == 21:  # MediaPipe-style hands: [T, 21, 3] or [T, NH, 21, 3]
        if a.ndim == 3:
            a = a[:, None]
        if a.ndim != 4:
            raise ValueError(f"{arg}: expected [T, 21, 3] or [T, hands, 21, 3], got {list(a.shape)}")
        return a
    raise ValueError(f"{arg}: expected 133 (DWPose whole body) or 21 (hand) keypoints per "
                     f"person, got {k} (shape {list(a.shape)})")


def _read_json(path: Path, arg: str):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{arg}: {str(path)!r} is not valid JSON ({e})") from None


def openpose_frame_hands(d: dict, arg: str = "keypoints") -> list[np.ndarray]:
    """The hands of one OpenPose-style frame `{"people": [...]}` (left, right per person), [21, 3] each."""
    if not isinstance(d, dict) or "people" not in d:
        raise ValueError(f"{arg}: OpenPose frame must be a mapping with 'people', got {str(d)[:80]!r}")
    hands = []
    for person in d["people"]:
        for key in ("hand_left_keypoints_2d", "hand_right_keypoints_2d"):
            v = np.asarray(person.get(key) or np.zeros(63), dtype=np.float64)
            if v.size != 63:
                raise ValueError(f"{arg}: {key} must hold 21 * 3 numbers, got {v.size}")
            hands.append(v.reshape(21, 3))
    return hands


def stack_frames(frames: list[list[np.ndarray]]) -> np.ndarray:
    """Per-frame lists of [21, 3] hands -> [T, NH, 21, 3], missing hands with confidence 0."""
    nh = max((len(f) for f in frames), default=0)
    out = np.zeros((len(frames), max(nh, 1), 21, 3))
    for t, f in enumerate(frames):
        for i, h in enumerate(f):
            out[t, i] = h
    return out


def load_keypoints(path, arg: str = "keypoints") -> np.ndarray:
    """Hand keypoints of a driving-pose file as `[T, NH, 21, 3]` (pixel x, y, confidence).

    Accepts `.npy` / `.npz` arrays (DWPose `[T, 133, 3]` or `[T, persons, 133, 3]`, hands
    `[T, 21, 3]` or `[T, hands, 21, 3]`; a missing confidence column means confident; `.npz`
    takes its `keypoints` array, else its only one), an OpenPose-style `.json` (a list of
    per-frame `{"people": [...]}` mappings, or a mapping with such a list under `frames`), or a
    folder of per-frame OpenPose JSON files. Missing hands have confidence 0.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{arg}: {str(path)!r} does not exist")
    if path.is_dir():
        files = sorted(path.glob("*.json"))
        if not files:
            raise ValueError(f"{arg}: folder {str(path)!r} holds no per-frame .json files")
        return stack_frames([openpose_frame_hands(_read_json(f, arg), f"{arg} ({f.name})") for f in files])
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(path)
        except ValueError as e:  # object arrays (pickles) and broken headers
            raise ValueError(f"{arg}: {str(path)!r} is not a numeric keypoint array ({e})") from None
        return hands_from_array(arr, arg)
    if suffix == ".npz":
        d = np.load(path)
        if "keypoints" in d:
            return hands_from_array(d["keypoints"], arg)
        if len(d.files) != 1:
            raise ValueError(f"{arg}: {str(path)!r} must hold a 'keypoints' array or a single array, has {d.files}")
        return hands_from_array(d[d.files[0]], arg)
    if suffix == ".json":
        data = _read_json(path, arg)
        if isinstance(data, dict) and "frames" in data:
            data = data["frames"]
        elif isinstance(data, dict) and "people" in data:  # one OpenPose frame file: a one-frame clip
            data = [data]
        if isinstance(data, list) and data and isinstance(data[0], dict):
            return stack_frames([openpose_frame_hands(f, arg) for f in data])
        return hands_from_array(np.asarray(data, dtype=np.float64), arg)
    raise ValueError(f"{arg}: unsupported keypoint file {str(path)!r} (.npy, .npz, .json or a folder of .json)")


def is_normalized(hands, min_confidence: float = MIN_CONFIDENCE) -> bool:
    """True when every confident coordinate of `hands` (any `[..., 3]` keypoints) lies in [0, 1]:
    DWPose's annotator writes coordinates divided by the image size; a real hand in pixels spans
    more than one pixel."""
    hands = np.asarray(hands)
    xy = hands[hands[..., 2] >= min_confidence][:, :2]
    return bool(len(xy)) and float(np.abs(xy).max()) <= 1.0


def to_pixels(hands, size) -> np.ndarray:
    """`[T, NH, 21, 3]` keypoints in pixels of an `(H, W)` image: normalized ones (`is_normalized`)
    scaled by the width and height, pixel ones returned as they are."""
    hands = np.asarray(hands, dtype=np.float64)
    if not is_normalized(hands):
        return hands
    out = hands.copy()
    out[..., 0] *= size[1]
    out[..., 1] *= size[0]
    return out


def find_pose_file(folder, name: str, arg: str = "poses") -> Path:
    """The pose file or folder for video `name` in `folder` (`name.npy|.npz|.json` or `name/`)."""
    folder = Path(folder)
    for cand in (folder / f"{name}.npy", folder / f"{name}.npz", folder / f"{name}.json", folder / name):
        if cand.exists():
            return cand
    raise ValueError(f"{arg}: no keypoints for video {name!r} in {str(folder)!r} "
                     f"(expected {name}.npy, {name}.npz, {name}.json or a folder {name}/)")


def hands_from_detections(detections) -> np.ndarray:
    """Per-frame lists of detected hands (objects with `landmarks` [21, 2]) -> `[T, NH, 21, 3]`."""
    return stack_frames([[np.concatenate([np.asarray(h.landmarks, np.float64)[:, :2], np.ones((21, 1))], 1)
                           for h in frame] for frame in detections])


def valid_hands(hands, min_confidence: float = MIN_CONFIDENCE, min_points: int = MIN_POINTS) -> np.ndarray:
    """bool `[T, NH]`: which hand slots have at least `min_points` points at `min_confidence`."""
    hands = np.asarray(hands)
    if hands.ndim != 4 or hands.shape[2:] != (21, 3):
        raise ValueError(f"hands: expected [T, NH, 21, 3] keypoints, got shape {list(hands.shape)}")
    return (hands[..., 2] >= min_confidence).sum(-1) >= min_points
