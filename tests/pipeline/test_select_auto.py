"""Hand scores and ranking of `ipa select auto`, on stand-in detections and with real MediaPipe on
a real photo clip (../shared/data/hands), and the selection.json rules."""

import numpy as np
import pytest

from ipa.hands import Hand
from ipa.select.auto import combine, hand_scores, select
from ipa.select.candidates import chosen


def _hand(t, dx=0.0):
    """A 21-point hand [21, 3] near (20 + t, 20), radius 6, confident."""
    a = np.linspace(0, 2 * np.pi, 21, endpoint=False)
    return np.stack([20 + t + dx + 6 * np.cos(a), 20 + 6 * np.sin(a), np.full(21, 0.9)], 1)


POSE = np.stack([_hand(t)[None] for t in range(9)])  # [9, 1, 21, 3]


def test_perfect_detections_score_high():
    dets = [[Hand(_hand(t)[:, :2], 0.95, "Left")] for t in range(9)]
    s = hand_scores(dets, POSE)
    assert s["detection"] == 1 and s["agreement"] == 1 and s["jitter"] == pytest.approx(0, abs=1e-9)
    assert s["confidence"] == pytest.approx(0.95) and combine(s) > 0.99


def test_missing_displaced_and_jittery_hands_score_lower():
    rng = np.random.default_rng(0)
    none = hand_scores([[] for _ in range(9)], POSE)
    assert none["detection"] == 0 and none["agreement"] == 0 and combine(none) == 0
    half = hand_scores([[Hand(_hand(t)[:, :2], 0.9, "L")] if t % 2 else [] for t in range(9)], POSE)
    assert half["detection"] == pytest.approx(4 / 9)
    far = hand_scores([[Hand(_hand(t, dx=15)[:, :2], 0.9, "L")] for t in range(9)], POSE)
    assert far["detection"] == 1 and far["agreement"] == 0  # found, but not where the pose puts it
    shaky = hand_scores([[Hand(_hand(t)[:, :2] + rng.normal(0, 3, (21, 2)), 0.9, "L")] for t in range(9)], POSE)
    assert shaky["jitter"] > 0.2
    good = combine(hand_scores([[Hand(_hand(t)[:, :2], 0.9, "L")] for t in range(9)], POSE))
    assert good > combine(shaky) > combine(none) and good > combine(far) and good > combine(half)


def test_no_pose_hands_is_neutral_and_frame_mismatch_is_an_error():
    empty = np.zeros((9, 1, 21, 3))
    s = hand_scores([[] for _ in range(9)], empty)
    assert s["detection"] == 1 and s["agreement"] == 1
    with pytest.raises(ValueError, match="8 frames but the candidate video has 9"):
        hand_scores([[] for _ in range(9)], empty[:8])


def test_select_top_threshold_and_human_overrides():
    scored = {f"c{c}/cand-{k}": {"condition": f"c{c}", "candidate": k, "score": s}
              for c, row in enumerate([(0.2, 0.9, 0.5), (0.1, 0.1, 0.3)]) for k, s in enumerate(row)}
    top = select(scored, top=1)
    assert [k for k, v in top.items() if v["auto"]] == ["c0/cand-1", "c1/cand-2"]
    assert top["c0/cand-0"]["rank"] == 3 and top["c1/cand-0"]["rank"] == 2  # tie: lower index first
    both = select(scored, top=2, threshold=0.4)
    assert sorted(k for k, v in both.items() if v["auto"]) == ["c0/cand-1", "c0/cand-2"]
    both["c0/cand-1"]["human"] = "bad"
    both["c1/cand-0"]["human"] = "good"
    assert chosen({"candidates": both}) == ["c0/cand-2", "c1/cand-0"]
    with pytest.raises(ValueError, match="top"):
        select(scored, top=None, threshold=None)


def test_real_mediapipe_scores_a_drawn_hand_above_an_erased_one(shared_dir, hand_model):
    """On a real photo clip (COCO 459, a hand holding a camera, shifted 4 px per frame) with the pose's
    hand where the hand is: the clip scores high; the same clip with the hand painted out scores low."""
    from ipa.hands import HandDetector
    from ipa.hands.media import read_image

    img = read_image(shared_dir / "data" / "hands" / "COCO_val2014_000000000459.jpg")
    clip = np.stack([np.roll(img, 4 * t, axis=1) for t in range(5)])
    erased = clip.copy()
    for t in range(5):  # the hand region (checked by eye, see tests/hands/test_detector.py), shifted
        erased[t, 235:410, 410 + 4 * t:515 + 4 * t] = img[235:410, 410:515].reshape(-1, 3).mean(0)
    with HandDetector(hand_model) as det:
        (hand,) = [h for h in det.detect(img) if h.landmarks[:, 0].mean() > 400]
        pose = np.stack([np.concatenate([hand.landmarks + [4 * t, 0], np.full((21, 1), 0.9)], 1)[None]
                         for t in range(5)])
        good = hand_scores(det.detect_video(clip, fps=8), pose)
    with HandDetector(hand_model) as det:  # a fresh tracker: nothing carried over from the good clip
        bad = hand_scores(det.detect_video(erased, fps=8), pose)
    assert good["detection"] == 1.0 and good["agreement"] > 0.8 and good["confidence"] > 0.5
    assert bad["detection"] < 0.5 and combine(bad) < combine(good) - 0.3
