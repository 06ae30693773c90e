import json

import cv2
import numpy as np
import pytest
import torch

from ipa.cli import main
from ipa.eval.io import read_video, write_video
from tests.eval.conftest import TinyLPIPS, TinyVideoNet, TinyFrameNet, moving_video

T, H, W = 9, 48, 64


def hand_track(t):
    """Keypoints [T, 21, 3] covering the moving textured square (as a stand-in hand)."""
    kp = np.zeros((t, 21, 3))
    for i in range(t):
        x0, y0 = 4 + (3 * i) % (W - 24), 8 + i % (H - 24)
        kp[i, :, 0] = np.linspace(x0, x0 + 16, 21)
        kp[i, :, 1] = np.linspace(y0, y0 + 16, 21)
    kp[..., 2] = 0.9
    return kp


def save_frames(folder, frames):
    folder.mkdir(parents=True)
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:03d}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    rng = np.random.default_rng(0)
    refs = {"clipA": moving_video(T, H, W, seed=1), "clipB": moving_video(T, H, W, seed=2)}
    (root / "poses").mkdir()
    for name, v in refs.items():
        save_frames(root / "reference" / name, v)
        noise = rng.normal(0, 1, v.shape)
        write_video(root / "good" / f"{name}.mp4", np.clip(v + 6 * noise, 0, 255).astype(np.uint8), crf=0)
        bad = v.copy()
        kp = hand_track(T)
        for i in range(T):  # blur the hand region heavily, add noise everywhere
            x0, y0 = int(kp[i, 0, 0]), int(kp[i, 0, 1])
            bad[i, y0 : y0 + 17, x0 : x0 + 17] = cv2.GaussianBlur(v[i, y0 : y0 + 17, x0 : x0 + 17], (0, 0), 3)
        write_video(root / "bad" / f"{name}.mp4", np.clip(bad + 25 * noise, 0, 255).astype(np.uint8), crf=0)
        save_frames(root / "same" / name, v)
    np.save(root / "poses" / "clipA.npy", hand_track(T))
    frames = [{"people": [{"hand_right_keypoints_2d": k.ravel().tolist()}]} for k in hand_track(T)]
    (root / "poses" / "clipB.json").write_text(json.dumps(frames))
    x = torch.zeros(1, 3, 4, 24, 24)
    torch.jit.trace(TinyVideoNet(), x).save(str(root / "video.pt"))
    torch.jit.trace(TinyFrameNet(), x[:, :, 0]).save(str(root / "frame.pt"))
    torch.jit.trace(TinyLPIPS(), (x[:, :, 0], x[:, :, 0] + 1)).save(str(root / "lpips.pt"))
    (root / "protocol.yaml").write_text(
        f"resolution: [24, 32]\nclip_len: 4\nhand_crop_size: 32\nhand_padding: 0.25\n"
        f"extractors:\n  fid: {{path: {root / 'frame.pt'}, kind: frame}}\n")
    return root


def test_write_read_video_round_trip(tmp_path):
    v = moving_video(T, H, W)
    back = read_video(write_video(tmp_path / "v.mp4", v, crf=0))
    assert back.shape == v.shape and np.abs(back.astype(int) - v).mean() < 3  # RGB->YUV444 rounding only


def test_cli_end_to_end(workspace, capsys):
    r = workspace
    out = r / "report"
    rc = main(["eval", "--reference", str(r / "reference"), "--poses", str(r / "poses"), "--out", str(out),
               "--compare", str(r / "good"), str(r / "bad"), f"same={r / 'same'}", "--protocol",
               str(r / "protocol.yaml"), "--lpips-weights", str(r / "lpips.pt"), "--extractor",
               f"fvd={r / 'video.pt'}", "--detect", "off", "--device", "cpu", "--worst", "4", "--no-progress"])
    assert rc == 0
    raw = json.loads((out / "metrics.json").read_text())
    runs = {k: v["summary"] for k, v in raw["runs"].items()}
    assert list(runs) == ["good", "bad", "same"]
    good, bad, same = runs["good"], runs["bad"], runs["same"]
    assert good["frames"] == 2 * T and good["videos"] == 2
    # identical run: SSIM 1, PSNR inf written as the string "inf", LPIPS/FID/FVD 0, hand metrics perfect
    assert same["psnr"] == "inf" and same["psnr_identical_frames"] == 2 * T
    assert same["ssim"] == pytest.approx(1.0) and same["lpips"] == pytest.approx(0.0, abs=1e-6)
    assert same["fvd"] == pytest.approx(0.0, abs=1e-6) and same["fid"] == pytest.approx(0.0, abs=1e-6)
    assert same["ssim_hand"] == pytest.approx(1.0) and same["psnr_hand"] == "inf"
    # ordering: good beats bad on every metric, hand crops from every confident pose hand
    assert good["psnr"] > bad["psnr"] + 5 and good["ssim"] > bad["ssim"] and good["lpips"] < bad["lpips"]
    assert good["ssim_hand"] > bad["ssim_hand"] and good["psnr_hand"] > bad["psnr_hand"]
    assert good["fid"] < bad["fid"] and good["fvd"] < bad["fvd"]
    assert good["hand_crops"] == 2 * T and good["fvd_samples"] == [4, 4]  # 9 frames -> 2 clips of 4 per video
    assert raw["hand_source"] == "poses" and raw["protocol"]["resolution"] == [24, 32]
    assert "data range 255" in raw["variants"]["psnr"]
    md = (out / "report.md").read_text()
    assert "| run | frames | ssim ↑ | psnr ↑ | lpips ↓ | ssim_hand ↑ | psnr_hand ↑ | fid ↓ | fvd ↓ |" in md
    assert "| same | 18 | 1.0000 | inf |" in md
    for m in ("ssim", "psnr", "lpips", "ssim_hand", "psnr_hand", "fid", "fvd"):
        assert (out / f"bar_{m}.png").stat().st_size > 1000
    for run in ("good", "bad", "same"):
        assert (out / f"worst_hand_crops_{run}.png").is_file()
    assert "wrote" in capsys.readouterr().out
    # the same --out again, one run: no bar charts or crop strips of the earlier report stay beside it
    assert main(["eval", "--reference", str(r / "reference"), "--poses", str(r / "poses"), "--out", str(out),
                 "--generated", str(r / "good"), "--detect", "off", "--no-progress"]) == 0
    assert not list(out.glob("bar_*.png")) and [p.name for p in out.glob("worst_hand_crops_*.png")] == [
        "worst_hand_crops_good.png"]


def test_cli_without_poses_or_detector_says_there_are_no_hand_crops(workspace, tmp_path, capsys):
    r = workspace
    assert main(["eval", "--generated", str(r / "good"), "--reference", str(r / "reference"), "--out",
                 str(tmp_path / "report"), "--detect", "off", "--no-progress"]) == 0
    raw = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert not {"hand_crops", "ssim_hand", "psnr_hand"} & set(raw["runs"]["good"]["summary"])
    assert any("without --poses, no hand crops either" in n for n in raw["notes"])
    assert "without --poses, no hand crops either (no SSIM-Hand/PSNR-Hand)" in capsys.readouterr().err


def test_cli_with_mediapipe_ends_cleanly(workspace, hand_model, tmp_path):
    """The detector is closed before exit: left to the interpreter's shutdown, MediaPipe's
    HandLandmarker.__del__ printed a TypeError traceback after every report."""
    import subprocess
    import sys

    r = workspace
    proc = subprocess.run([sys.executable, "-m", "ipa.cli", "eval", "--generated", str(r / "good"), "--reference",
                           str(r / "reference"), "--out", str(tmp_path / "report"), "--detect", "on", "--hand-model",
                           str(hand_model), "--no-progress"], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "detection_rate" in json.loads((tmp_path / "report" / "metrics.json").read_text())["runs"]["good"]["summary"]
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr[-3000:]


def _err(capsys, argv):
    rc = main(argv)
    return rc, capsys.readouterr().err


def test_cli_bad_input(workspace, tmp_path, capsys):
    r = workspace
    base = ["eval", "--out", str(tmp_path / "o"), "--detect", "off", "--no-progress"]
    rc, err = _err(capsys, base + ["--generated", str(r / "good"), "--reference", str(tmp_path / "none")])
    assert rc == 2 and "--reference: " in err and "is not a folder" in err
    short = tmp_path / "short"
    for name in ("clipA", "clipB"):
        write_video(short / f"{name}.mp4", moving_video(T - 1, H, W))
    rc, err = _err(capsys, base + ["--generated", str(short), "--reference", str(r / "reference")])
    assert rc == 2 and "--generated video 'clipA': 8 frames but --reference video 'clipA' has 9" in err
    small = tmp_path / "small"
    for name in ("clipA", "clipB"):
        write_video(small / f"{name}.mp4", moving_video(T, H, W - 16))
    rc, err = _err(capsys, base + ["--generated", str(small), "--reference", str(r / "reference")])
    assert rc == 2 and "frame size [48, 48] differs from --reference video 'clipA''s [48, 64]" in err
    poses = tmp_path / "poses"
    poses.mkdir()
    np.save(poses / "clipA.npy", hand_track(T + 2))
    rc, err = _err(capsys, base + ["--generated", str(r / "good"), "--reference", str(r / "reference"),
                                   "--poses", str(poses)])
    assert rc == 2 and "--poses: 11 frames of keypoints for video 'clipA' but its reference has 9" in err
    rc, err = _err(capsys, base + ["--compare", str(r / "good"), str(short), "--reference", str(r / "reference")])
    assert rc == 2 and "two runs named" not in err and "--compare video 'clipA': 8 frames" in err


def test_normalized_poses_give_the_pixel_poses_crops(workspace, tmp_path):
    """DWPose's annotator writes x / W and y / H: eval scales them by the reference's frame size."""
    from ipa.eval.protocol import Protocol
    from ipa.eval.runner import evaluate

    r = workspace
    normalized = tmp_path / "poses"
    normalized.mkdir()
    np.save(normalized / "clipA.npy", hand_track(T) / [W, H, 1])
    frames = [{"people": [{"hand_right_keypoints_2d": k.ravel().tolist()}]} for k in hand_track(T) / [W, H, 1]]
    (normalized / "clipB.json").write_text(json.dumps(frames))
    protocol = Protocol(resolution=(24, 32), hand_crop_size=32)
    pixel, _ = evaluate({"good": r / "good"}, r / "reference", poses=r / "poses", protocol=protocol, progress=False)
    scaled, _ = evaluate({"good": r / "good"}, r / "reference", poses=normalized, protocol=protocol, progress=False)
    want, got = pixel[0].summary, scaled[0].summary
    assert got["hand_crops"] == want["hand_crops"] == 2 * T
    assert got["ssim_hand"] == pytest.approx(want["ssim_hand"], rel=1e-6)
    assert got["psnr_hand"] == pytest.approx(want["psnr_hand"], rel=1e-6)


class FakeDetector:
    """Stands in for ipa.hands.HandDetector: one hand on the moving square, offset by `shift` pixels."""

    def __init__(self, shift=0.0, score=0.8):
        self.shift, self.score, self.calls = shift, score, 0

    def detect_video(self, frames):
        from types import SimpleNamespace

        self.calls += 1
        s = frames.shape[2] / W  # keypoints follow the protocol's resize
        return [[SimpleNamespace(landmarks=k[:, :2] * s + self.shift, score=self.score, handedness="Right")]
                for k in hand_track(len(frames))]


def test_evaluate_with_detector(workspace):
    from ipa.eval.protocol import Protocol
    from ipa.eval.runner import evaluate

    r = workspace
    det = FakeDetector(shift=2.0)
    protocol = Protocol(hand_crop_size=32)
    results, info = evaluate({"good": r / "good"}, r / "reference", poses=r / "poses", protocol=protocol,
                             detector=det, progress=False)
    s = results[0].summary
    assert info["hand_source"] == "poses" and det.calls == 2  # generated videos only
    assert s["hkc"] == pytest.approx(0.8) and s["detection_rate"] == pytest.approx(1.0)
    assert s["landmark_distance_px"] == pytest.approx(2.0 * np.sqrt(2))
    assert s["hkv"] == pytest.approx(0.0, abs=1e-9)  # the square moves at constant velocity: no jitter (nan if untracked)
    # without poses, crops come from hands detected in the reference
    results, info = evaluate({"good": r / "good"}, r / "reference", protocol=protocol, detector=FakeDetector(),
                             progress=False)
    s = results[0].summary
    assert info["hand_source"] == "detected in reference" and s["hand_crops"] == 2 * T
    assert s["detection_rate"] == pytest.approx(1.0) and np.isnan(s["landmark_distance"])
