import json
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from ipa.eval import frames as F
from ipa.eval.hands import (crop, detections_to_hands, hand_box, hand_crops, hand_plausibility, load_pose_hands,
                            pool_plausibility, score_crops)

# hand regions (x0, y0, x1, y1) picked by eye in the shared COCO photos
HAND_REGIONS = {
    "COCO_val2014_000000000395.jpg": [(275, 250, 385, 420)],  # hand holding a phone
    "COCO_val2014_000000000459.jpg": [(425, 250, 500, 400)],  # hand holding a camera
    "COCO_val2014_000000000241.jpg": [(245, 355, 290, 400), (118, 315, 165, 352)],  # two hands
}


def keypoints_in(region, seed=0, conf=0.9):
    """21 keypoints spanning `region` exactly (corners + random interior), confidence `conf`."""
    x0, y0, x1, y1 = region
    r = np.random.default_rng(seed)
    pts = np.column_stack([r.uniform(x0, x1, 21), r.uniform(y0, y1, 21), np.full(21, conf)])
    pts[0, :2], pts[1, :2] = (x0, y0), (x1, y1)
    return pts


def test_hand_box_geometry():
    pts = keypoints_in((100, 50, 140, 130))  # 40 x 80, center (120, 90)
    assert hand_box(pts, padding=0.25) == pytest.approx((60, 30, 180, 150))  # side 80 * 1.5
    assert hand_box(pts, padding=0.0) == pytest.approx((80, 50, 160, 130))
    tiny = keypoints_in((10, 10, 12, 12))
    assert hand_box(tiny, padding=0.0, min_size=16) == pytest.approx((3, 3, 19, 19))
    low = pts.copy()
    low[4:, 2] = 0.1  # only 4 confident points
    assert hand_box(low, min_points=5) is None
    assert hand_box(low, min_points=4) is not None
    with pytest.raises(ValueError, match=r"hand: expected \[21, 3\]"):
        hand_box(pts[:, :2])


def test_crop_pads_outside_frame_with_zeros():
    img = np.full((20, 30, 3), 200, np.uint8)
    c = crop(img, (-10, -10, 10, 10), size=20)  # top-left quarter inside the image
    assert c.shape == (20, 20, 3)
    assert (c[:10, :] == 0).all() and (c[:, :10] == 0).all() and (c[10:, 10:] == 200).all()


@pytest.mark.parametrize("photo", sorted(HAND_REGIONS))
def test_hand_crops_on_real_photos(shared_dir, photo):
    img = cv2.cvtColor(cv2.imread(str(shared_dir / "data" / "hands" / photo)), cv2.COLOR_BGR2RGB)
    regions = HAND_REGIONS[photo]
    hands = np.stack([keypoints_in(r, seed=i) for i, r in enumerate(regions)])[None]  # [1, NH, 21, 3]
    crops = hand_crops(img[None], img[None], hands, crop_size=96, padding=0.25)
    assert [c.hand for c in crops] == list(range(len(regions)))
    for c, (x0, y0, x1, y1) in zip(crops, regions):
        assert c.generated.shape == (96, 96, 3)
        bx0, by0, bx1, by1 = c.box  # square, padded, centred on the hand region
        assert bx1 - bx0 == pytest.approx(max(x1 - x0, y1 - y0) * 1.5)
        assert (bx0 + bx1) / 2 == pytest.approx((x0 + x1) / 2) and (by0 + by1) / 2 == pytest.approx((y0 + y1) / 2)
    # identical frames: SSIM-Hand 1, PSNR-Hand inf
    score_crops(crops)
    assert all(c.ssim == pytest.approx(1.0) and np.isinf(c.psnr) for c in crops)

    # damage inside the hands only: the hand metric drops much more than the full-frame metric
    gen = img.copy()
    for x0, y0, x1, y1 in regions:
        gen[y0:y1, x0:x1] = cv2.GaussianBlur(img[y0:y1, x0:x1], (0, 0), 4)
    hand_ssim = np.mean([c.ssim for c in score_crops(hand_crops(gen[None], img[None], hands, 96))])
    frame_ssim = F.ssim(gen[None], img[None])[0]
    assert hand_ssim < 0.95 and frame_ssim > 0.95 and (1 - hand_ssim) > 3 * (1 - frame_ssim)

    # damage away from the hands (top-left 120x120, outside every crop box): hand metrics untouched
    gen = img.copy()
    gen[:120, :120] = 255 - gen[:120, :120]
    crops = score_crops(hand_crops(gen[None], img[None], hands, 96))
    assert all(c.ssim == pytest.approx(1.0) and np.isinf(c.psnr) for c in crops)
    assert F.ssim(gen[None], img[None])[0] < 0.99


def test_hand_crops_bad_input():
    v = np.zeros((3, 32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="poses: 2 frames of keypoints for a 3-frame video"):
        hand_crops(v, v, np.zeros((2, 1, 21, 3)))
    with pytest.raises(ValueError, match=r"poses: expected hand keypoints \[T, hands, 21, 3\]"):
        hand_crops(v, v, np.zeros((3, 21, 3)))
    with pytest.raises(ValueError, match="generated: 2 frames but reference has 3"):
        hand_crops(v[:2], v, np.zeros((3, 1, 21, 3)))


def _dwpose(T=3):
    kp = np.zeros((T, 133, 3))
    kp[:, :, 2] = 0.9
    kp[:, 91:112, :2] = np.arange(21)[None, :, None] + 100  # left hand
    kp[:, 112:133, :2] = np.arange(21)[None, :, None] + 200  # right hand
    kp[:, :, 0] += np.arange(T)[:, None]
    return kp


def test_load_pose_hands_formats_agree(tmp_path):
    kp = _dwpose()
    np.save(tmp_path / "a.npy", kp)
    np.savez(tmp_path / "b.npz", keypoints=kp[:, None])  # [T, persons, 133, 3]
    frames = [{"people": [{"pose_keypoints_2d": [0] * 54,
                           "hand_left_keypoints_2d": kp[t, 91:112].ravel().tolist(),
                           "hand_right_keypoints_2d": kp[t, 112:133].ravel().tolist()}]} for t in range(3)]
    (tmp_path / "c.json").write_text(json.dumps(frames))
    (tmp_path / "d").mkdir()
    for t, f in enumerate(frames):
        (tmp_path / "d" / f"{t:04d}_keypoints.json").write_text(json.dumps(f))
    np.save(tmp_path / "e.npy", np.stack([kp[:, 91:112, :2], kp[:, 112:133, :2]], 1))  # [T, 2, 21, 2]
    expect = np.stack([kp[:, 91:112], kp[:, 112:133]], 1)
    for name in ("a.npy", "b.npz", "c.json", "d", "e.npy"):
        got = load_pose_hands(tmp_path / name)
        assert got.shape == (3, 2, 21, 3), name
        np.testing.assert_allclose(got[..., :2], expect[..., :2], err_msg=name)
        np.testing.assert_allclose(got[..., 2], 1.0 if name == "e.npy" else 0.9, err_msg=name)


def test_load_pose_hands_bad_input(tmp_path):
    with pytest.raises(ValueError, match="poses: .* does not exist"):
        load_pose_hands(tmp_path / "missing.npy")
    np.save(tmp_path / "bad.npy", np.zeros((3, 18, 3)))
    with pytest.raises(ValueError, match="poses: expected 133 .* or 21 .* got 18"):
        load_pose_hands(tmp_path / "bad.npy")
    (tmp_path / "bad.json").write_text(json.dumps([{"people": [{"hand_left_keypoints_2d": [1, 2, 3]}]}]))
    with pytest.raises(ValueError, match="hand_left_keypoints_2d must hold 21 \\* 3 numbers"):
        load_pose_hands(tmp_path / "bad.json")


# ------------------------------------------------------------------------ plausibility

def hand(lm, score=0.9, side="Left"):
    return SimpleNamespace(landmarks=np.asarray(lm, float), score=score, handedness=side)


BASE = np.column_stack([np.linspace(0, 30, 21), np.linspace(0, 40, 21)])  # hand size 50 (box diagonal)


def test_hkv_zero_for_constant_velocity_and_known_for_jitter():
    steady = [[hand(BASE + [5 * t, 2 * t])] for t in range(6)]
    assert hand_plausibility(steady)["hkv"] == pytest.approx(0.0, abs=1e-12)
    e = 1.5  # p[t] = base + v t + e (-1)^t -> |second difference| = 4 e
    jitter = [[hand(BASE + [5 * t + e * (-1) ** t, 0])] for t in range(6)]
    r = hand_plausibility(jitter)
    assert r["hkv"] == pytest.approx(4 * e / 50.0)
    assert r["hkv_count"] == 4


def test_hkc_detection_rate_and_landmark_distance_with_poses():
    T = 4
    pose = np.zeros((T, 2, 21, 3))
    pose[:, 0, :, :2], pose[:, 1, :, :2] = BASE, BASE + [200, 0]
    pose[..., 2] = 0.9
    pose[3, 1, :, 2] = 0.0  # right hand not confident in the last frame: 7 pose hands
    dets = [
        [hand(BASE + [3, 4], 0.8), hand(BASE + [200, 0], 0.6, "Right")],  # distance 5 px and 0 px
        [hand(BASE + [600, 0], 0.4)],  # far from both pose hands: unmatched
        [],
        [hand(BASE, 1.0)],
    ]
    r = hand_plausibility(dets, pose)
    assert r["hkc"] == pytest.approx((0.8 + 0.6 + 0.4 + 1.0) / 4)
    assert r["pose_hands"] == 7 and r["pose_hands_matched"] == 3
    assert r["detection_rate"] == pytest.approx(3 / 7)
    assert r["landmark_distance_px"] == pytest.approx(5 / 3)
    assert r["landmark_distance"] == pytest.approx(5 / 50 / 3)
    # without poses: frames with at least one detected hand
    assert hand_plausibility(dets)["detection_rate"] == pytest.approx(3 / 4)
    # pooling two copies gives the same means; nothing detected gives nan HKC
    pooled = pool_plausibility([r, r])
    assert pooled["detection_rate"] == pytest.approx(3 / 7) and pooled["hkc"] == pytest.approx(r["hkc"])
    assert np.isnan(hand_plausibility([[], []])["hkc"])
    with pytest.raises(ValueError, match="poses: 4 frames of keypoints for 2 frames"):
        hand_plausibility(dets[:2], pose)


def test_detections_to_hands():
    h = detections_to_hands([[hand(BASE)], [], [hand(BASE), hand(BASE + 1)]])
    assert h.shape == (3, 2, 21, 3)
    assert (h[1, :, :, 2] == 0).all() and (h[2, :, :, 2] == 1).all()


def test_crops_from_mediapipe_detections_on_real_photo(shared_dir, hand_model):
    """Crops from hands ipa.hands detects in a real photo land on the hand picked by eye."""
    from ipa.hands import HandDetector

    photo = "COCO_val2014_000000000395.jpg"
    img = cv2.cvtColor(cv2.imread(str(shared_dir / "data" / "hands" / photo)), cv2.COLOR_BGR2RGB)
    with HandDetector(hand_model) as detector:
        hands = detections_to_hands([detector.detect(img)])
    crops = hand_crops(img[None], img[None], hands, crop_size=64)
    assert crops, "no hand detected in the phone photo"
    x0, y0, x1, y1 = HAND_REGIONS[photo][0]
    cx, cy = (crops[0].box[0] + crops[0].box[2]) / 2, (crops[0].box[1] + crops[0].box[3]) / 2
    assert x0 <= cx <= x1 and y0 <= cy <= y1
