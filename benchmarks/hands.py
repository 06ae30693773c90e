"""Hand-mask throughput: keypoints -> pixel -> latent masks for a Wan clip, and MediaPipe detection.

    python -m benchmarks.hands [--frames 81] [--size 480x832] [--detect-frames 32]
    ipa bench hands

Target (issue 3): masks for an 81-frame 480x832 clip from keypoints in well under a second.
Writes benchmarks/results/hands-cpu.csv (everything here runs on the CPU; versions on every row), no plot.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from ipa.hands import hand_masks, latent_mask, parse_size

from .common import RESULTS, bounded, device_name, print_table, versions, write_csv


def synthetic_clip_keypoints(frames, height, width, seed=0):
    """Two moving hands per frame, 21 points each, about 1/8 of the frame height in size."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 1, (2, 21, 2)) * height / 24
    t = np.arange(frames)[:, None, None, None]
    centers = np.array([[width * 0.3, height * 0.5], [width * 0.7, height * 0.5]])[None, :, None, :]
    xy = centers + base[None] + 20 * np.sin(t / 8.0)
    return np.concatenate([xy, np.full(xy.shape[:-1] + (1,), 0.9)], axis=-1)


def best_of(fn, reps):
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), float(np.median(times))


def main(argv=None):
    p = argparse.ArgumentParser(prog="ipa bench hands", description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=bounded(int, 1), default=81)
    p.add_argument("--size", default="480x832")
    p.add_argument("--reps", type=bounded(int, 1), default=5)
    p.add_argument("--detect-frames", type=bounded(int, 0), default=32,
                   help="frames for MediaPipe throughput (0: skip)")
    p.add_argument("--out-dir", default=str(RESULTS))
    args = p.parse_args(argv)
    H, W = parse_size(args.size)
    info = {"device": device_name(torch.device("cpu")), **versions()}
    kps = synthetic_clip_keypoints(args.frames, H, W)
    rows = []
    for shape in ("hull", "box"):
        best, med = best_of(lambda: hand_masks(kps, (H, W), shape=shape), args.reps)
        rows.append({**info, "task": f"keypoints->pixel masks ({shape})", "frames": args.frames, "size": f"{H}x{W}",
                     "median_s": round(med, 4), "best_s": round(best, 4), "frames_per_s": round(args.frames / med, 1)})
    pixel = hand_masks(kps, (H, W))
    best, med = best_of(lambda: latent_mask(pixel), args.reps)
    rows.append({**info, "task": "pixel->latent masks", "frames": args.frames, "size": f"{H}x{W}",
                 "median_s": round(med, 4), "best_s": round(best, 4), "frames_per_s": round(args.frames / med, 1)})
    if args.detect_frames:
        rows.append(detection_row(info, args.detect_frames))
    out = Path(args.out_dir) / "hands-cpu.csv"
    write_csv(out, rows)
    print_table(rows, ["task", "frames", "size", "median_s", "best_s", "frames_per_s"])
    print(f"wrote {out}")
    return 0


def detection_row(info, n):
    """MediaPipe VIDEO-mode throughput on the shared COCO photos (a 640-px frame per call)."""
    from ipa.hands import HandDetector
    from ipa.hands.media import read_image

    photos = sorted((Path(__file__).resolve().parents[2] / "shared" / "data" / "hands").glob("*.jpg"))
    import cv2

    frames = [cv2.resize(read_image(p), (480, 480)) for p in photos] or [np.zeros((480, 480, 3), np.uint8)]
    clip = np.stack([frames[i % len(frames)] for i in range(n)])
    with HandDetector() as det:
        det.detect_video(clip[:4])  # warm-up: graph start and XNNPACK delegate
        t0 = time.perf_counter()
        det.detect_video(clip)
        dt = time.perf_counter() - t0
    return {**info, "task": "MediaPipe detect_video", "frames": n, "size": "480x480",
            "median_s": round(dt, 4), "best_s": round(dt, 4), "frames_per_s": round(n / dt, 1)}


if __name__ == "__main__":
    raise SystemExit(main())
