"""`ipa data prepare`: videos + DWPose keypoints -> a wan-vace condition dataset.

For each `VIDEOS/<name>.<ext>` with keypoints `POSES/<name>.npy|.npz|.json|<name>/`:
decode (PyAV), take `num_frames = 4k + 1` frames, resize-to-cover and center-crop to HxW, map the
keypoints the same way, draw the pose video (DWPose style), pick the reference frame, encode with
the Wan VAE, encode the prompt, build the hand mask, and write one sample:

    x0         [C, 1 + k + 1, h, w]   reference latent, then the clip's latents
    control    [96, 1 + k + 1, h, w]  VACE context of the pose video, reference frame first
    text_emb   [L, D]
    hand_mask  [k + 1, h, w]          latent frames after the reference (the clip's frame 0 too)

(`--reference none` drops the reference frame: x0/control have k + 1 frames and hand_mask k.)
Beside the shards, `conditions/<name>/` keeps what generation and review need: `pose.mp4`,
`video.mp4` (the prepared clip), `reference.png`, `hands.npy` (pose hand keypoints on the prepared
frames, `[T, NH, 21, 3]`) and `meta.json`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from .video import CropGeometry, check_frame_count, decode_video, frame_indices, write_mp4

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm")
CONDITIONS = "conditions"


def sample_id(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def reference_index(choice, num_frames: int) -> int | None:
    """Which prepared frame is the reference image: "first", "middle", "none" or an index."""
    if choice in (None, "none"):
        return None
    if choice == "first":
        return 0
    if choice == "middle":
        return num_frames // 2
    try:
        i = int(choice)
    except (TypeError, ValueError):
        raise ValueError(f"reference must be 'first', 'middle', 'none' or a frame index, got {choice!r}") from None
    if not 0 <= i < num_frames:
        raise ValueError(f"reference index must be in [0, {num_frames}), got {i}")
    return i


def find_videos(folder) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"--videos {str(folder)!r} is not a folder")
    videos = sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if not videos:
        raise ValueError(f"--videos {str(folder)!r} holds no videos ({', '.join(VIDEO_SUFFIXES)})")
    return videos


def load_clip(video_path, pose_path, size, num_frames, *, stride=1, start=0):
    """(frames [T, H, W, 3] uint8, Pose on those frames, fps) of one video and its keypoints."""
    from .pose_render import load_pose

    frames, fps = decode_video(video_path)
    pose = load_pose(pose_path)
    if len(pose) != len(frames):
        raise ValueError(f"keypoints {str(pose_path)!r} have {len(pose)} frames but video {str(video_path)!r} "
                         f"has {len(frames)}: they must match frame for frame")
    idx = frame_indices(len(frames), num_frames, stride=stride, start=start, path=video_path)
    geo = CropGeometry(frames.shape[1], frames.shape[2], *size)
    pose = pose.take(idx)
    if pose.is_normalized():  # DWPose annotator output: coordinates divided by the image size
        pose = pose.map(lambda xy: xy * np.array([geo.src_w, geo.src_h]))
    pose = pose.map(geo.points)
    return np.stack([geo.frame(f) for f in frames[idx]]), pose, fps / stride


def pixel_hand_masks(frames, pose, source, detector=None, fps=16.0):
    """uint8 `[T, H, W]` hand masks from the pose keypoints or from MediaPipe on the frames."""
    from ipa.hands import hand_masks, hands_from_detections

    if source == "keypoints":
        hands = pose.hands
    elif source == "mediapipe":
        hands = hands_from_detections(detector.detect_video(frames, fps=fps))
    else:
        raise ValueError(f"hand_source must be 'keypoints' or 'mediapipe', got {source!r}")
    return hand_masks(hands, frames.shape[1:3])


def prepare(videos, poses, out, *, vae, text_encoder=None, text_emb=None, prompt="", size=(480, 832),
            num_frames=81, stride=1, start=0, reference="first", hand_source="keypoints", hand_model=None,
            max_text_len=512, samples_per_shard=16, dtype=torch.float32, device="cpu", progress=True):
    """Write the condition dataset `out` (see the module docstring); returns its path.

    `vae`: local AutoencoderKLWan folder (or an instance). Prompt: `text_encoder` (local umT5 folder)
    encodes `prompt`, or `VIDEOS/<name>.txt` when present; else `text_emb` (a cached `[L, D]`
    embedding file or tensor) is used for every clip.
    """
    from tqdm.auto import tqdm

    from ipa.hands import latent_mask
    from ipa.hands.keypoints import find_pose_file
    from ipa.hands.media import write_image

    from .encode import LatentCodec, PromptEncoder, load_text_embedding, load_vae
    from .pose_render import render_pose_video
    from .shards import ShardWriter

    H, W = size
    check_frame_count(num_frames, "num_frames (--frames)")
    if H % 16 or W % 16:  # 8x VAE times the transformer's 2x2 patch
        raise ValueError(f"size (--size) must be multiples of 16 (8x VAE, 2x2 patches), got {H}x{W}")
    if text_encoder is None and text_emb is None:
        raise ValueError("pass text_encoder (--text-encoder: a local umT5 folder) or text_emb (--text-emb: a "
                         "cached prompt embedding)")
    ref_i = reference_index(reference, num_frames)
    video_files = find_videos(videos)
    pose_files = [find_pose_file(poses, v.stem, "--poses") for v in video_files]  # fail before any work
    codec = LatentCodec(load_vae(vae, dtype=dtype, device=device) if isinstance(vae, (str, Path)) else vae)
    encoder = PromptEncoder(text_encoder, max_length=max_text_len, dtype=dtype, device=device) if text_encoder else None
    cached = (text_emb if isinstance(text_emb, torch.Tensor) else load_text_embedding(text_emb)) if text_emb is not None else None
    detector = None
    if hand_source == "mediapipe":
        from ipa.hands import HandDetector
        detector = HandDetector(hand_model)
    out = Path(out)
    info = dict(family="wan-vace", height=H, width=W, num_frames=num_frames, reference=ref_i is not None,
                reference_index=ref_i, hand_source=hand_source, vae=str(vae) if isinstance(vae, (str, Path)) else None,
                z_dim=codec.vae.config.z_dim, prepared=True)
    try:
        with ShardWriter(out, samples_per_shard=samples_per_shard, **info) as writer:
            for vpath, ppath in tqdm(list(zip(video_files, pose_files)), desc="preparing", unit="clip",
                                     disable=not progress):
                sid = sample_id(vpath.stem)
                frames, pose, fps = load_clip(vpath, ppath, size, num_frames, stride=stride, start=start)
                pose_video = render_pose_video(pose, H, W)
                text = prompt
                if (vpath.with_suffix(".txt")).is_file():
                    text = vpath.with_suffix(".txt").read_text()
                emb = encoder(text) if encoder is not None else cached
                x0 = codec.encode(codec.to_pixels(frames))
                ref = codec.encode(codec.to_pixels(frames[ref_i:ref_i + 1])) if ref_i is not None else None
                mask = torch.from_numpy(latent_mask(pixel_hand_masks(frames, pose, hand_source, detector, fps)))
                sample = {
                    "x0": torch.cat([ref, x0], 1) if ref is not None else x0,
                    "control": codec.vace_control(pose_video, ref),
                    "text_emb": emb.to(dtype),
                    # The first latent frame is never hand-weighted: with a reference it is the
                    # reference, so the clip's own frame 0 keeps its mask.
                    "hand_mask": (mask if ref is not None else mask[1:]).float(),
                }
                # clone: a cached prompt embedding is one tensor, and safetensors refuses shared storage
                writer.add(sid, {k: v.to(dtype).clone() for k, v in sample.items()})
                side = out / CONDITIONS / sid
                side.mkdir(parents=True, exist_ok=True)
                write_mp4(side / "pose.mp4", pose_video, fps)
                write_mp4(side / "video.mp4", frames, fps)
                np.save(side / "hands.npy", pose.hands.astype(np.float32))
                write_image(side / "reference.png", frames[ref_i if ref_i is not None else 0])
                (side / "meta.json").write_text(json.dumps({
                    "id": sid, "video": str(vpath), "keypoints": str(ppath), "fps": fps, "prompt": text,
                    "height": H, "width": W, "num_frames": num_frames, "reference_index": ref_i}, indent=1))
    finally:
        if detector is not None:
            detector.close()
    return out


def condition_dir(dataset, sid) -> Path:
    """The side folder of condition `sid` in a prepared dataset (pose.mp4, hands.npy, ...)."""
    return Path(dataset) / CONDITIONS / sid


def register(ds):
    """`ipa data prepare`."""
    from ipa.hands import parse_size

    q = ds.add_parser("prepare", help="videos + DWPose keypoints -> wan-vace condition dataset")
    q.add_argument("--videos", required=True, help="folder of videos (<name>.mp4, optional <name>.txt prompt)")
    q.add_argument("--poses", required=True, help="folder of keypoints: <name>.npy|.npz|.json or <name>/ of JSON")
    q.add_argument("--vae", required=True, help="local AutoencoderKLWan folder (or a pipeline folder)")
    q.add_argument("--text-encoder", help="local umT5 encoder folder (or pipeline folder with tokenizer/)")
    q.add_argument("--text-emb", help="cached prompt embedding [L, D] (.safetensors/.pt/.npy), used when "
                   "there is no --text-encoder")
    q.add_argument("--prompt", default="", help="prompt for clips without a <name>.txt")
    q.add_argument("--out", required=True)
    q.add_argument("--size", type=parse_size, default=(480, 832), help="HxW (default 480x832)")
    q.add_argument("--frames", type=int, default=81, help="4k+1 frames per clip (default 81)")
    q.add_argument("--stride", type=int, default=1)
    q.add_argument("--start", type=int, default=0)
    q.add_argument("--reference", default="first", help="reference frame: first|middle|none|<index>")
    q.add_argument("--hand-source", choices=("keypoints", "mediapipe"), default="keypoints")
    q.add_argument("--hand-model", help="MediaPipe hand bundle (for --hand-source mediapipe)")
    q.add_argument("--max-text-len", type=int, default=512)
    q.add_argument("--samples-per-shard", type=int, default=16)
    q.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    q.add_argument("--device", default="cpu")
    q.set_defaults(func=_run)


def _run(args):
    out = prepare(args.videos, args.poses, args.out, vae=args.vae, text_encoder=args.text_encoder,
                  text_emb=args.text_emb, prompt=args.prompt, size=args.size, num_frames=args.frames,
                  stride=args.stride, start=args.start, reference=args.reference, hand_source=args.hand_source,
                  hand_model=args.hand_model, max_text_len=args.max_text_len,
                  samples_per_shard=args.samples_per_shard, dtype=getattr(torch, args.dtype), device=args.device)
    print(f"prepared conditions in {out}")
