"""Evaluate one or more runs (folders of generated videos) against reference videos."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import frames as F
from . import hands as H
from .io import list_videos, read_video
from .protocol import Protocol

#: metric -> True when higher is better (for reports)
HIGHER_IS_BETTER = {
    "ssim": True, "psnr": True, "lpips": False, "ssim_hand": True, "psnr_hand": True,
    "hkc": True, "hkv": False, "detection_rate": True, "landmark_distance": False,
    "landmark_distance_px": False,
}


@dataclass
class RunResult:
    name: str
    path: str
    summary: dict = field(default_factory=dict)
    videos: dict = field(default_factory=dict)
    worst_crops: list = field(default_factory=list)  # HandCrop with .video attribute, lowest SSIM first


def _video_names(runs: dict, ref_videos: dict, protocol: Protocol, reference) -> list[str]:
    if protocol.sequences is not None:
        names = list(protocol.sequences)
        for n in names:
            if n not in ref_videos:
                raise ValueError(f"--reference: protocol sequence {n!r} is not in {str(reference)!r}")
            for run, (arg, vids) in runs.items():
                if n not in vids:
                    raise ValueError(f"{arg}: protocol sequence {n!r} is missing from run {run!r}")
        return names
    first_run, (first_arg, first) = next(iter(runs.items()))
    names = list(first)
    if not names:
        raise ValueError(f"{first_arg}: no videos (video files or frame folders) in run {first_run!r}")
    for n in names:
        if n not in ref_videos:
            raise ValueError(f"--reference: no reference video named {n!r} (for {first_arg} run {first_run!r}) "
                             f"in {str(reference)!r}")
    for run, (arg, vids) in runs.items():
        if set(vids) != set(names):
            raise ValueError(f"{arg}: run {run!r} has videos {sorted(vids)} but run {first_run!r} has "
                             f"{sorted(names)}; compared runs must hold the same videos (or list them in "
                             "the protocol's sequences)")
    return names


def _load(path, protocol: Protocol, arg: str):
    raw = read_video(path, arg)
    frames, idx, scale = protocol.apply(raw)
    return raw.shape[:3], frames, idx, scale


def evaluate(runs: dict, reference, poses=None, protocol: Protocol | None = None, lpips=None,
             extractors: dict | None = None, detector=None, worst: int = 8, progress: bool = True,
             run_args: dict | None = None) -> tuple[list[RunResult], dict]:
    """Evaluate `runs` (name -> folder of generated videos) against `reference` (folder).

    `poses`: optional folder of driving-pose keypoints per video (see `ipa.eval.hands.load_pose_hands`);
    `lpips`: an `ipa.eval.frames.LPIPS` or None; `extractors`: name -> `ipa.eval.video.FeatureExtractor`
    (Fréchet distances named after them); `detector`: an `ipa.hands.HandDetector`-like object with
    `detect_video(frames)`, or None to skip plausibility metrics (and, without poses, hand crops).
    `run_args`: name -> argument label for error messages. Returns (results, shared info).
    """
    from tqdm import tqdm

    from .video import fd_from_features

    protocol = protocol or Protocol()
    extractors = extractors or {}
    run_args = run_args or {}
    ref_videos = list_videos(reference, "--reference")
    listed = {name: (run_args.get(name, "--generated"), list_videos(p, run_args.get(name, "--generated")))
              for name, p in runs.items()}
    names = _video_names(listed, ref_videos, protocol, reference)
    if poses is not None and not Path(poses).is_dir():
        raise ValueError(f"--poses: {str(poses)!r} is not a folder")
    hand_source = "poses" if poses is not None else ("detected in reference" if detector is not None else None)
    ref_feats = {k: [] for k in extractors}
    ref_hands_cache: dict = {}
    results = []
    for run_i, (run, path) in enumerate(runs.items()):
        arg, vids = listed[run]
        res = RunResult(run, str(path))
        gen_feats = {k: [] for k in extractors}
        all_ssim, all_psnr, all_lpips, crops_all, plaus = [], [], [], [], []
        for name in tqdm(names, desc=f"eval {run}", unit="video", disable=not progress):
            (n_ref, *ref_size), ref, ref_idx, scale = _load(ref_videos[name], protocol, f"--reference ({name})")
            _, gen, _, _ = _load(vids[name], protocol, f"{arg} ({name})")
            labels = (f"{arg} video {name!r}", f"--reference video {name!r}")
            F._pair(gen, ref, labels)
            v = {"frames": len(gen)}
            s, p = F.ssim(gen, ref), F.psnr(gen, ref)
            all_ssim.append(s)
            all_psnr.append(p)
            v.update(ssim=float(s.mean()), psnr=float(p.mean()), psnr_identical_frames=int(np.isinf(p).sum()))
            if lpips is not None:
                d = lpips(gen, ref)
                all_lpips.append(d)
                v["lpips"] = float(d.mean())
            for k, ex in extractors.items():
                gen_feats[k].append(ex(gen))
                if run_i == 0:
                    ref_feats[k].append(ex(ref))
            # hands: keypoints of the driving pose, else detections on the reference
            pose_hands = None
            if poses is not None:
                pose_hands = H.load_pose_hands(H.find_pose_file(poses, name), f"--poses ({name})")
                if len(pose_hands) != n_ref:
                    raise ValueError(f"--poses: {len(pose_hands)} frames of keypoints for video {name!r} but its "
                                     f"reference has {n_ref} frames")
                pose_hands = H.to_pixels(pose_hands, ref_size)[ref_idx].copy()  # DWPose's [0, 1] coordinates
                pose_hands[..., 0] *= scale[0]
                pose_hands[..., 1] *= scale[1]
                crop_hands = pose_hands
            elif detector is not None:
                if name not in ref_hands_cache:
                    ref_hands_cache[name] = H.detections_to_hands(detector.detect_video(ref))
                crop_hands = ref_hands_cache[name]
            else:
                crop_hands = None
            if crop_hands is not None:
                crops = H.score_crops(H.hand_crops(gen, ref, crop_hands, protocol.hand_crop_size,
                                                   protocol.hand_padding, protocol.hand_min_confidence,
                                                   protocol.hand_min_points))
                for c in crops:
                    c.video = name
                crops_all.extend(crops)
                v["hand_crops"] = len(crops)
                if crops:
                    v["ssim_hand"] = float(np.mean([c.ssim for c in crops]))
                    v["psnr_hand"] = float(np.mean([c.psnr for c in crops]))
            if detector is not None:
                pl = H.hand_plausibility(detector.detect_video(gen), pose_hands, protocol.hand_min_confidence,
                                         protocol.hand_min_points, protocol.hand_match_threshold)
                plaus.append(pl)
                v.update({k: pl[k] for k in ("hkc", "hkv", "detection_rate", "landmark_distance",
                                             "landmark_distance_px", "hands_detected")})
            res.videos[name] = v
        s, p = np.concatenate(all_ssim), np.concatenate(all_psnr)
        summ = {"videos": len(names), "frames": int(len(s)), "ssim": float(s.mean()), "psnr": float(p.mean()),
                "psnr_identical_frames": int(np.isinf(p).sum())}
        if all_lpips:
            summ["lpips"] = float(np.concatenate(all_lpips).mean())
        if hand_source is not None:
            summ["hand_crops"] = len(crops_all)
            if crops_all:
                summ["ssim_hand"] = float(np.mean([c.ssim for c in crops_all]))
                summ["psnr_hand"] = float(np.mean([c.psnr for c in crops_all]))
        if plaus:
            summ.update(H.pool_plausibility(plaus))
            summ["hands_detected"] = int(sum(pl["hands_detected"] for pl in plaus))
        for k in extractors:
            g, r = np.concatenate(gen_feats[k]), np.concatenate(ref_feats[k])
            summ[k] = fd_from_features(g, r)
            summ[f"{k}_samples"] = [int(len(g)), int(len(r))]
        res.summary = summ
        res.worst_crops = sorted(crops_all, key=lambda c: c.ssim)[:worst]
        results.append(res)
    info = {"videos": names, "hand_source": hand_source, "reference": str(reference),
            "poses": None if poses is None else str(poses)}
    return results, info
