"""MediaPipe detection on real COCO photos from ../shared/data/hands (skipped, saying why, without it)."""

import os
import sys

import numpy as np
import pytest

from ipa.hands import HandDetector, hand_masks, hands_from_detections, resolve_model_path
from ipa.hands.detector import NATIVE_LOGS_ENV, native_logs_held
from ipa.hands.media import read_image

# Hand regions (x0, y0, x1, y1) checked by eye on the photos (and with `ipa hands detect --preview`).
HANDS = {
    "COCO_val2014_000000000241.jpg": [(240, 345, 290, 405), (115, 300, 165, 355), (75, 420, 130, 475)],
    "COCO_val2014_000000000395.jpg": [(260, 240, 395, 425)],  # hand holding a phone to the ear
    "COCO_val2014_000000000459.jpg": [(420, 245, 505, 400)],  # hand holding a camera
}
NO_CLOSE_HANDS = ["COCO_val2014_000000000257.jpg", "COCO_val2014_000000000360.jpg"]


def photo(shared_dir, name):
    return read_image(shared_dir / "data" / "hands" / name)


@pytest.fixture(scope="module")
def detector(hand_model):
    with HandDetector(hand_model) as det:
        yield det


@pytest.mark.parametrize("name", sorted(HANDS))
def test_finds_the_hands_and_masks_cover_them(shared_dir, detector, name):
    img = photo(shared_dir, name)
    found = detector.detect(img)
    assert found, f"no hand found in {name}"
    for h in found:
        assert h.landmarks.shape == (21, 2) and 0 < h.score <= 1 and h.handedness in ("Left", "Right")
    for x0, y0, x1, y1 in HANDS[name]:
        inside = [h for h in found if ((h.landmarks >= [x0, y0]) & (h.landmarks <= [x1, y1])).all(1).mean() > 0.9]
        assert inside, f"no detected hand inside {(x0, y0, x1, y1)} in {name}"
    # Every detected hand lies in one of the regions (no hands on faces or furniture).
    for h in found:
        c = h.landmarks.mean(0)
        assert any(x0 <= c[0] <= x1 and y0 <= c[1] <= y1 for x0, y0, x1, y1 in HANDS[name]), c
    # The mask made from the detections covers every hand region's center and little else.
    kps = hands_from_detections([found])
    mask = hand_masks(kps, img.shape[:2])[0]
    for x0, y0, x1, y1 in HANDS[name]:
        assert mask[(y0 + y1) // 2 - 5:(y0 + y1) // 2 + 5, (x0 + x1) // 2 - 5:(x0 + x1) // 2 + 5].any()
    assert mask.mean() < 0.1


@pytest.mark.parametrize("name", NO_CLOSE_HANDS)
def test_no_hands_where_no_person_is_close(shared_dir, detector, name):
    assert detector.detect(photo(shared_dir, name)) == []


def test_video_mode_tracks_a_clip(shared_dir, detector):
    img = photo(shared_dir, "COCO_val2014_000000000459.jpg")
    clip = np.stack([img, img, np.roll(img, 6, axis=1), np.roll(img, 12, axis=1)])
    per_frame = detector.detect_video(clip, fps=8)
    assert len(per_frame) == 4 and all(len(f) >= 1 for f in per_frame)
    # The hand moves 6 px right per shifted frame; the tracked landmarks follow.
    shift = per_frame[3][0].landmarks.mean(0)[0] - per_frame[0][0].landmarks.mean(0)[0]
    assert 8 < shift < 16


def test_bad_image_and_missing_model(tmp_path, detector, monkeypatch):
    with pytest.raises(ValueError, match=r"image must be an RGB uint8 array \[H, W, 3\]"):
        detector.detect(np.zeros((10, 10), np.uint8))
    monkeypatch.delenv("IPA_HAND_MODEL", raising=False)
    monkeypatch.setenv("IPA_CACHE_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="ipa hands model"):
        resolve_model_path()
    with pytest.raises(FileNotFoundError, match="model_path .* is not a file"):
        resolve_model_path(tmp_path / "missing.task")


def test_native_logs_are_held_and_shown_when_the_call_fails(capfd, monkeypatch):
    monkeypatch.delenv(NATIVE_LOGS_ENV, raising=False)
    with native_logs_held():
        os.write(2, b"INFO: chatter\n")
    with pytest.raises(RuntimeError, match="graph failed"), native_logs_held():
        os.write(2, b"E0000 the diagnosis\n")
        raise RuntimeError("graph failed")
    print("after", file=sys.stderr)  # fd 2 is back
    assert capfd.readouterr().err == "E0000 the diagnosis\nafter\n"
    monkeypatch.setenv(NATIVE_LOGS_ENV, "1")
    with native_logs_held():
        os.write(2, b"INFO: shown\n")
    assert capfd.readouterr().err == "INFO: shown\n"


@pytest.mark.parametrize("shown", [False, True])
def test_detection_keeps_mediapipe_logs_off_stderr(shared_dir, hand_model, capfd, monkeypatch, shown):
    monkeypatch.setenv(NATIVE_LOGS_ENV, "1" if shown else "0")
    img = photo(shared_dir, "COCO_val2014_000000000459.jpg")
    with HandDetector(hand_model) as det:  # a fresh one: MediaPipe logs as it builds and closes
        assert det.detect(img) and det.detect_video(np.stack([img, img]), fps=8)
    err = capfd.readouterr().err
    assert ("LiteRT" in err) == shown, err
