"""`ipa hands ...` end to end on a tiny generated clip and a real photo."""

import json

import numpy as np
import pytest

from ipa.cli import main
from ipa.hands.media import read_image, read_video, write_video

from .test_keypoints_masks import one_hand


def test_from_keypoints_writes_pixel_and_latent_masks_and_preview(tmp_path):
    T, H, W = 9, 64, 96
    frames = [{"people": [{"hand_right_keypoints_2d": one_hand(40 + t, 32, scale=12).ravel().tolist()}]}
              for t in range(T)]
    (tmp_path / "kp.json").write_text(json.dumps(frames))
    out = tmp_path / "masks.npz"
    assert main(["hands", "from-keypoints", str(tmp_path / "kp.json"), "--size", f"{H}x{W}",
                 "--out", str(out), "--preview", str(tmp_path / "p.mp4")]) == 0
    with np.load(out) as d:
        assert d["pixel_masks"].shape == (T, H, W) and d["keypoints"].shape == (T, 2, 21, 3)  # left, right slots per person
        assert d["latent_masks"].shape == (3, H // 8, W // 8)
        assert d["pixel_masks"][:, 32, 40].all()
    video, _ = read_video(tmp_path / "p.mp4")
    assert video.shape == (T, H, W, 3)


def test_from_keypoints_scales_normalized_dwpose_keypoints(tmp_path, capsys):
    """DWPose's annotator writes x / W and y / H: the masks equal those of the pixel keypoints."""
    T, H, W = 5, 64, 96
    pixel = np.stack([one_hand(40 + t, 32, scale=12) for t in range(T)])  # [T, 21, 3]
    np.save(tmp_path / "pixel.npy", pixel)
    np.save(tmp_path / "normalized.npy", pixel / [W, H, 1])
    for name in ("pixel", "normalized"):
        assert main(["hands", "from-keypoints", str(tmp_path / f"{name}.npy"), "--size", f"{H}x{W}",
                     "--out", str(tmp_path / f"{name}.npz")]) == 0
    assert "normalized to [0, 1] (DWPose's annotator): scaled to --size 64x96" in capsys.readouterr().out
    with np.load(tmp_path / "pixel.npz") as want, np.load(tmp_path / "normalized.npz") as got:
        assert want["pixel_masks"].sum() > 100
        np.testing.assert_array_equal(got["pixel_masks"], want["pixel_masks"])
        np.testing.assert_allclose(got["keypoints"], want["keypoints"])


def test_detect_on_video_and_image_then_preview(tmp_path, shared_dir, hand_model):
    img = read_image(shared_dir / "data" / "hands" / "COCO_val2014_000000000459.jpg")[:632, :512]
    clip = np.stack([img] * 5)
    write_video(tmp_path / "clip.mp4", clip, fps=8)
    out = tmp_path / "m.npz"
    assert main(["hands", "detect", str(tmp_path / "clip.mp4"), "--out", str(out), "--model", str(hand_model),
                 "--preview", str(tmp_path / "prev.png")]) == 0
    with np.load(out) as d:
        assert d["pixel_masks"].shape == (5, 632, 512) and d["pixel_masks"].any(axis=(1, 2)).all()
        assert d["latent_masks"].shape == (2, 79, 64)
    assert read_image(tmp_path / "prev.png").shape[1] == 5 * 512  # frames side by side
    assert main(["hands", "preview", str(tmp_path / "clip.mp4"), "--masks", str(out),
                 "--out", str(tmp_path / "again.mp4")]) == 0
    assert read_video(tmp_path / "again.mp4")[0].shape == (5, 632, 512, 3)


def test_cli_errors_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="INPUT .* does not exist"):
        main(["hands", "detect", str(tmp_path / "none.mp4"), "--out", str(tmp_path / "m.npz")])
    np.save(tmp_path / "bad.npy", np.zeros((3, 50, 3)))
    with pytest.raises(ValueError, match="KEYPOINTS: expected 133"):
        main(["hands", "from-keypoints", str(tmp_path / "bad.npy"), "--size", "64x64", "--out", str(tmp_path / "m.npz")])


@pytest.mark.parametrize("flags,match", [
    (["--out", "{tmp}/m.txt"], r"^--out: mask files are .npz, got '.*m.txt'"),
    (["--preview", "{tmp}/p.txt"], r"^--preview: expected an image or video path \(.png, .*\.mp4.*\), got '.*p.txt'"),
    (["--fps", "0"], r"^--fps: must be a finite number > 0, got 0.0"),
    (["--fps", "nan"], r"^--fps: .* got nan"),
    (["--min-confidence", "5"], r"^--min-confidence: keypoint confidences are in \[0, 1\], got 5.0"),
    (["--min-confidence", "-0.1"], r"^--min-confidence: .* got -0.1"),
    (["--min-points", "0"], r"^--min-points: a hand has 21 keypoints, expected 1..21, got 0"),
    (["--min-points", "22"], r"^--min-points: .* got 22"),
])
def test_from_keypoints_refuses_flags_that_would_give_empty_masks_or_odd_files(tmp_path, flags, match):
    (tmp_path / "kp.json").write_text(json.dumps([{"people": [{"hand_right_keypoints_2d":
                                                               one_hand(40, 32, scale=12).ravel().tolist()}]}]))
    flags = [f.format(tmp=tmp_path) for f in flags]  # after the default --out: argparse keeps the last
    with pytest.raises(ValueError, match=match):
        main(["hands", "from-keypoints", str(tmp_path / "kp.json"), "--size", "64x96",
              "--out", str(tmp_path / "m.npz"), *flags])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kp.json"]  # refused before writing anything


def test_detect_and_preview_refuse_odd_output_paths(tmp_path):
    # Checked before the input is read or the model loaded: the input need not exist.
    with pytest.raises(ValueError, match=r"^--max-hands: must be >= 1, got 0"):
        main(["hands", "detect", str(tmp_path / "clip.mp4"), "--out", str(tmp_path / "m.npz"), "--max-hands", "0"])
    with pytest.raises(ValueError, match=r"^--out: mask files are .npz"):
        main(["hands", "detect", str(tmp_path / "clip.mp4"), "--out", str(tmp_path / "m")])
    with pytest.raises(ValueError, match=r"^--out: expected an image or video path"):
        main(["hands", "preview", str(tmp_path / "clip.mp4"), "--masks", str(tmp_path / "m.npz"),
              "--out", str(tmp_path / "p.npz")])
