"""`ipa hands ...`: build the detector model, make masks from detections or keypoints, preview them.

Mask files (`.npz`): `pixel_masks` uint8 [T, H, W], `keypoints` float [T, NH, 21, 3] (x, y,
confidence; detections carry their hand score as confidence), `fps`, and, when T = 4k + 1 and
H, W are multiples of 8, `latent_masks` uint8 [k + 1, H/8, W/8] (see `ipa.hands.latent_mask`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import detector, keypoints, latent, masks, media, preview


def save_masks(path, pixel_masks, kps, fps) -> dict:
    """Write a mask file atomically; returns what was written (names -> shapes)."""
    arrays = {"pixel_masks": pixel_masks.astype(np.uint8), "keypoints": kps.astype(np.float32),
              "fps": np.float32(fps)}
    try:
        arrays["latent_masks"] = latent.latent_mask(arrays["pixel_masks"])
    except ValueError as e:  # shape not on Wan's grid: pixel masks only, and say so
        print(f"note: no latent_masks in {path}: {e}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    with open(part, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(part, path)
    return {k: tuple(np.shape(v)) for k, v in arrays.items()}


def load_frames(path):
    """`(frames [T, H, W, 3] uint8, fps)` of an image (T = 1) or a video."""
    if not Path(path).is_file():
        raise ValueError(f"INPUT {str(path)!r} does not exist")
    if media.is_video(path):
        return media.read_video(path)
    return media.read_image(path)[None], 1.0


def write_preview(path, frames, pixel_masks, kps, fps):
    drawn = preview.draw_clip(frames, pixel_masks, kps)
    if media.is_video(path):
        media.write_video(path, drawn, fps=max(fps, 1.0))
    elif len(drawn) == 1:
        media.write_image(path, drawn[0])
    else:  # a still of a clip: frames side by side, at most 8
        step = max(1, len(drawn) // 8)
        media.write_image(path, np.concatenate(list(drawn[::step][:8]), axis=1))
    print(f"preview: {path}")


def _check_picture_path(flag, path):
    suffixes = media.IMAGE_SUFFIXES + media.VIDEO_SUFFIXES
    if Path(path).suffix.lower() not in suffixes:
        raise ValueError(f"{flag}: expected an image or video path ({', '.join(suffixes)}), got {str(path)!r}")


def _check_output_args(args):
    """Refuse, before any work, flags that would silently give empty masks or an odd file."""
    if Path(args.out).suffix.lower() != ".npz":
        raise ValueError(f"--out: mask files are .npz, got {args.out!r}")
    if args.preview is not None:
        _check_picture_path("--preview", args.preview)
    if not 0 < getattr(args, "fps", 1.0) < float("inf"):  # NaN too
        raise ValueError(f"--fps: must be a finite number > 0, got {args.fps}")
    if not 0 <= getattr(args, "min_confidence", 0.0) <= 1:
        raise ValueError(f"--min-confidence: keypoint confidences are in [0, 1], got {args.min_confidence}")
    if not 1 <= getattr(args, "min_points", 1) <= 21:
        raise ValueError(f"--min-points: a hand has 21 keypoints, expected 1..21, got {args.min_points}")
    if getattr(args, "max_hands", 1) < 1:
        raise ValueError(f"--max-hands: must be >= 1, got {args.max_hands}")


def cmd_model(args):
    path = detector.build_model_bundle(args.out, wheel=args.wheel)
    print(f"hand model bundle: {path}")


def cmd_detect(args):
    _check_output_args(args)
    frames, fps = load_frames(args.input)
    with detector.HandDetector(args.model, max_hands=args.max_hands) as det:
        found = [det.detect(frames[0])] if len(frames) == 1 else det.detect_video(frames, fps=fps, progress=True)
    kps = keypoints.hands_from_detections(found)
    for t, hands in enumerate(found):  # a detection's confidence is its hand score
        for i, h in enumerate(hands):
            kps[t, i, :, 2] = h.score
    pixel = masks.hand_masks(kps, frames.shape[1:3], shape=args.shape, margin=args.margin)
    written = save_masks(args.out, pixel, kps, fps)
    print(f"{sum(map(len, found))} hands in {len(frames)} frame(s); wrote {args.out}: {written}")
    if args.preview:
        write_preview(args.preview, frames, pixel, kps, fps)


def cmd_from_keypoints(args):
    _check_output_args(args)
    kps = keypoints.load_keypoints(args.keypoints, arg="KEYPOINTS")
    size = masks.parse_size(args.size)
    if keypoints.is_normalized(kps):
        print(f"KEYPOINTS are normalized to [0, 1] (DWPose's annotator): scaled to --size {size[0]}x{size[1]}")
        kps = keypoints.to_pixels(kps, size)
    pixel = masks.hand_masks(kps, size, shape=args.shape, margin=args.margin,
                             min_confidence=args.min_confidence, min_points=args.min_points)
    written = save_masks(args.out, pixel, kps, args.fps)
    valid = keypoints.valid_hands(kps, args.min_confidence, args.min_points).sum()
    print(f"{valid} valid hands in {len(kps)} frames; wrote {args.out}: {written}")
    if args.preview:
        frames = np.zeros(pixel.shape + (3,), np.uint8) if args.video is None else load_frames(args.video)[0]
        write_preview(args.preview, frames, pixel, kps, args.fps)


def cmd_preview(args):
    _check_picture_path("--out", args.out)
    frames, fps = load_frames(args.input)
    with np.load(args.masks) as data:
        pixel, kps = data["pixel_masks"], data["keypoints"]
    if pixel.shape != frames.shape[:3]:
        raise ValueError(f"--masks holds masks {list(pixel.shape)} but INPUT has frames {list(frames.shape[:3])}")
    write_preview(args.out, frames, pixel, kps, fps)


def _mask_options(p):
    p.add_argument("--shape", choices=masks.SHAPES, default="hull", help="hand region: convex hull or box")
    p.add_argument("--margin", type=float, default=0.15, help="grow each hand by this fraction of its size")


def register(sub):
    p = sub.add_parser("hands")
    hs = p.add_subparsers(dest="hands_command", metavar="SUBCOMMAND", required=True)

    q = hs.add_parser("model", help=f"build the MediaPipe hand model bundle (downloads {detector.SOURCE_WHEEL})")
    q.add_argument("--out", default=None, help=f"where to write it (default {detector.default_model_path()})")
    q.add_argument("--wheel", default=None, help="use this local mediapipe 0.10.21 wheel instead of downloading")
    q.set_defaults(func=cmd_model)

    q = hs.add_parser("detect", help="detect hands in an image or video and write masks")
    q.add_argument("input", help="image (.png/.jpg) or video (.mp4, ...)")
    q.add_argument("--out", required=True, help="masks .npz")
    q.add_argument("--preview", default=None, help="also write a preview (.png or .mp4)")
    q.add_argument("--model", default=None, help=f"hand_landmarker bundle (default ${detector.MODEL_ENV} or the cache)")
    q.add_argument("--max-hands", type=int, default=4)
    _mask_options(q)
    q.set_defaults(func=cmd_detect)

    q = hs.add_parser("from-keypoints", help="masks from DWPose / OpenPose / MediaPipe keypoints")
    q.add_argument("keypoints", help=".npy/.npz array, OpenPose-style .json, or a folder of per-frame .json")
    q.add_argument("--size", required=True, help="frame size HxW, e.g. 480x832")
    q.add_argument("--out", required=True, help="masks .npz")
    q.add_argument("--fps", type=float, default=16.0)
    q.add_argument("--min-confidence", type=float, default=keypoints.MIN_CONFIDENCE)
    q.add_argument("--min-points", type=int, default=keypoints.MIN_POINTS)
    q.add_argument("--preview", default=None, help="also write a preview (.png or .mp4)")
    q.add_argument("--video", default=None, help="draw the preview over this video (else black frames)")
    _mask_options(q)
    q.set_defaults(func=cmd_from_keypoints)

    q = hs.add_parser("preview", help="draw a mask file over its image or video")
    q.add_argument("input", help="the image or video the masks belong to")
    q.add_argument("--masks", required=True, help="masks .npz from detect / from-keypoints")
    q.add_argument("--out", required=True, help=".png or .mp4")
    q.set_defaults(func=cmd_preview)
