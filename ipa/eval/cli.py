"""`ipa eval`: metrics of generated videos against reference videos, written as a report."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path


def register(sub):
    p = sub.add_parser(
        "eval", description="Compare folders of generated videos (files or frame folders, matched by name) "
                            "with reference videos; write metrics.json, report.md and PNGs to --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--generated", help="folder of generated videos (one run; named after the folder)")
    p.add_argument("--reference", required=True, help="folder of ground-truth videos")
    p.add_argument("--poses", help="folder of driving-pose keypoints per video (NAME.npy/.npz/.json or NAME/); "
                                   "hand crops come from them (else from hands detected in the reference)")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--compare", nargs="+", default=[], metavar="RUN",
                   help="more runs to compare, each DIR or NAME=DIR; bar charts per metric")
    p.add_argument("--protocol", help="YAML protocol (sequences, resolution, frame sampling, crop settings, "
                                      "extractors; see ipa.eval.protocol)")
    p.add_argument("--lpips-weights", help="LPIPS weights: TorchScript file or lpips state dict "
                                           "(overrides the protocol's lpips_weights)")
    p.add_argument("--extractor", action="append", default=[], metavar="NAME=PATH",
                   help="TorchScript feature extractor for a Fréchet distance, e.g. fvd=i3d.pt, fid_vid=r3d.pt "
                        "(video clips) or fid=inception.pt (frames); repeatable")
    p.add_argument("--detect", choices=["auto", "on", "off"], default="auto",
                   help="MediaPipe hand detection for plausibility metrics, and for the hand crops when there "
                        "are no --poses (auto: skip with a note if no model)")
    p.add_argument("--hand-model", help="MediaPipe hand_landmarker bundle (else IPA_HAND_MODEL / `ipa hands model`)")
    p.add_argument("--device", help="torch device for LPIPS and extractors (default: cuda if present, else cpu)")
    p.add_argument("--worst", type=int, default=8, help="hand crops in the worst-crops strip per run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _runs(args) -> tuple[dict, dict]:
    runs, labels = {}, {}
    items = ([("--generated", args.generated)] if args.generated else []) + [("--compare", c) for c in args.compare]
    if not items:
        raise ValueError("--generated: give a folder of generated videos (or runs with --compare)")
    for arg, item in items:
        name, _, path = item.rpartition("=") if "=" in item else ("", "", item)
        path = Path(path)
        name = name or path.resolve().name
        if not path.is_dir():
            raise ValueError(f"{arg}: {str(path)!r} is not a folder")
        if name in runs:
            raise ValueError(f"{arg}: two runs named {name!r}; name them with NAME=DIR")
        runs[name], labels[name] = path, arg
    return runs, labels


def _detector(args, notes):
    no_crops = "" if args.poses else "; without --poses, no hand crops either (no SSIM-Hand/PSNR-Hand)"
    if args.detect == "off":
        notes.append("hand detection off (--detect off): no HKC/HKV/detection rate/landmark distance" + no_crops)
        return None
    try:
        from ipa.hands import HandDetector

        return HandDetector(model_path=args.hand_model)
    except Exception as e:  # missing module, mediapipe or model file
        if args.detect == "on":
            raise ValueError(f"--detect on: cannot build the hand detector: {e}") from e
        notes.append(f"hand plausibility metrics skipped: no hand detector ({type(e).__name__}: {e})" + no_crops)
        return None


def run(args) -> int:
    from .frames import LPIPS
    from .protocol import Protocol
    from .report import write_report
    from .runner import evaluate
    from .video import load_extractor

    try:
        runs, labels = _runs(args)
        protocol = Protocol.from_yaml(args.protocol) if args.protocol else Protocol()
        if args.lpips_weights:
            protocol.lpips_weights = args.lpips_weights
        for item in args.extractor:
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise ValueError(f"--extractor: expected NAME=PATH, got {item!r}")
            protocol.extractors[name] = {**protocol.extractors.get(name, {}), "path": path} \
                if isinstance(protocol.extractors.get(name), dict) else path
        notes = []
        lpips = LPIPS(protocol.lpips_weights, protocol.lpips_net, device=args.device) if protocol.lpips_weights else None
        if lpips is None:
            notes.append("LPIPS skipped: no weights (--lpips-weights or the protocol's lpips_weights)")
        extractors = {k: load_extractor(k, spec, protocol.clip_len, device=args.device)
                      for k, spec in protocol.extractors.items()}
        with _detector(args, notes) or contextlib.nullcontext() as detector:  # closed here, not at exit
            results, info = evaluate(runs, args.reference, poses=args.poses, protocol=protocol, lpips=lpips,
                                     extractors=extractors, detector=detector, worst=args.worst,
                                     progress=not args.no_progress, run_args=labels)
    except ValueError as e:
        print(f"ipa eval: error: {e}", file=sys.stderr)
        return 2
    info["notes"] = notes
    paths = write_report(results, info, protocol, args.out)
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    print(Path(paths["markdown"]).read_text().split("\n## Per video")[0])
    print(f"wrote {paths['json']}, {paths['markdown']} and {len(paths['charts']) + len(paths['strips'])} PNGs")
    return 0
