"""Keypoint formats in, pixel masks out."""

import json

import numpy as np
import pytest

from ipa.hands import MIN_CONFIDENCE, hand_masks, hands_from_array, load_keypoints, parse_size, valid_hands

SIZE = (120, 160)


def one_hand(cx=80.0, cy=60.0, scale=20.0, conf=0.9, seed=0):
    """A plausible 21-point hand around (cx, cy): wrist below, five fingers fanning up."""
    rng = np.random.default_rng(seed)
    pts = [(0.0, 1.0)]
    for angle in np.linspace(-1.0, 1.0, 5):
        for j in range(1, 5):
            pts.append((np.sin(angle) * 0.3 * j, 0.6 - 0.35 * j))
    xy = np.array(pts) * scale + [cx, cy] + rng.normal(0, 0.3, (21, 2))
    return np.column_stack([xy, np.full(21, conf)])


def test_formats_round_trip_to_the_same_mask(tmp_path):
    left, right = one_hand(50, 60, seed=1), one_hand(110, 60, seed=2)
    # DWPose / RTMW whole body: 133 points, left hand 91-111, right hand 112-132.
    body = np.zeros((2, 133, 3))
    body[:, 91:112], body[:, 112:133] = left, right
    np.save(tmp_path / "dwpose.npy", body)
    # OpenPose-style JSON, one file per clip and a folder of per-frame files.
    frame = {"people": [{"pose_keypoints_2d": [0.0] * 54, "hand_left_keypoints_2d": left.ravel().tolist(),
                         "hand_right_keypoints_2d": right.ravel().tolist()}]}
    (tmp_path / "openpose.json").write_text(json.dumps([frame, frame]))
    (tmp_path / "one_openpose_frame.json").write_text(json.dumps(frame))  # a single frame file: a 1-frame clip
    assert len(load_keypoints(tmp_path / "one_openpose_frame.json")) == 1
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="^keypoints: .*broken.json' is not valid JSON"):
        load_keypoints(tmp_path / "broken.json")
    (tmp_path / "frames").mkdir()
    for t in range(2):
        (tmp_path / "frames" / f"{t:04d}_keypoints.json").write_text(json.dumps(frame))
    # MediaPipe 21-point hands.
    np.save(tmp_path / "mediapipe.npy", np.stack([np.stack([left, right])] * 2))

    masks = {name: hand_masks(load_keypoints(tmp_path / name), SIZE)
             for name in ("dwpose.npy", "openpose.json", "frames", "mediapipe.npy")}
    ref = masks["mediapipe.npy"]
    assert ref.shape == (2, *SIZE) and ref.dtype == np.uint8 and 0 < ref.mean() < 0.5
    for name, m in masks.items():
        assert np.array_equal(m, ref), name
    # Both hands are in it, nothing between them.
    assert ref[0, 60, 50] and ref[0, 60, 110] and not ref[0, 60, 80]


def test_low_confidence_hands_are_dropped():
    good, weak = one_hand(50, 60), one_hand(110, 60, conf=MIN_CONFIDENCE / 2)
    hands = np.stack([good, weak])[None]
    assert valid_hands(hands).tolist() == [[True, False]]
    m = hand_masks(hands, SIZE)
    assert m[0, 60, 50] and not m[0, :, 95:].any()
    # A hand with only a few confident points is not a hand either.
    few = one_hand(110, 60)
    few[4:, 2] = 0.0
    assert not hand_masks(few[None, None], SIZE).any()


def test_hull_box_and_margin():
    hands = one_hand()[None, None]
    hull0 = hand_masks(hands, SIZE, margin=0.0)
    hull = hand_masks(hands, SIZE, margin=0.15)
    box = hand_masks(hands, SIZE, shape="box", margin=0.15)
    assert hull0.sum() < hull.sum() < box.sum()
    assert (hull0 <= hull).all() and (hull0 <= box).all()  # growing never loses the hand itself


@pytest.mark.parametrize("arr,match", [
    (np.zeros((3, 17, 3)), "expected 133 .* or 21 .* keypoints"),
    (np.zeros((3, 21)), r"\(x, y\[, confidence\]\)"),
])
def test_bad_keypoints_give_clear_errors(arr, match):
    with pytest.raises(ValueError, match=match):
        hands_from_array(arr)


@pytest.mark.parametrize("size", ["-480x832", "480", (0, 10), "axb"])
def test_bad_size(size):
    with pytest.raises(ValueError, match="size must"):
        parse_size(size)


def test_bad_mask_options():
    with pytest.raises(ValueError, match="shape must be one of"):
        hand_masks(one_hand()[None, None], SIZE, shape="circle")
    with pytest.raises(ValueError, match="margin must be"):
        hand_masks(one_hand()[None, None], SIZE, margin=-1)


def test_missing_file_named(tmp_path):
    with pytest.raises(ValueError, match="keypoints: .*nope.npy.* does not exist"):
        load_keypoints(tmp_path / "nope.npy")
