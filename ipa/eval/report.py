"""Reports: `metrics.json`, `report.md`, bar charts per metric (several runs), worst hand crops.

JSON has no infinities: non-finite numbers are written as strings, `"inf"` / `"-inf"` (PSNR of
identical frames) and `"nan"` (a metric with nothing to average, e.g. HKV without any hand
detected in three consecutive frames). `load_json` turns them back into floats.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .frames import PSNR_VARIANT, SSIM_VARIANT

VARIANTS = {
    "psnr": PSNR_VARIANT,
    "ssim": SSIM_VARIANT,
    "lpips": "LPIPS (Zhang et al. 2018) with user weights, inputs in [-1, 1], per frame, mean over frames",
    "ssim_hand/psnr_hand": "SSIM/PSNR as above on square hand crops (keypoint box, padded, resized), mean over crops",
    "hkc": "mean MediaPipe per-hand score over hands detected in generated frames",
    "hkv": "mean |p[t+1] - 2p[t] + p[t-1]| over landmarks / hand size, over tracked hands (lower: steadier)",
    "detection_rate": "matched driving-pose hands / confident pose hands (no poses: frames with a hand / frames)",
    "landmark_distance": "mean detected-to-pose landmark distance / pose hand size, over matched hands",
    "frechet": "Fréchet distance of Gaussians fitted to extractor features (scipy.linalg.sqrtm)",
    "aggregation": "frame metrics: mean over all frames of all videos; hand crops: mean over all crops",
}

# column order in tables and charts; other numeric summary keys (Fréchet distances) follow
ORDER = ["ssim", "psnr", "lpips", "ssim_hand", "psnr_hand", "hkc", "hkv", "detection_rate",
         "landmark_distance", "landmark_distance_px"]
NOT_METRICS = {"videos", "frames", "psnr_identical_frames", "hand_crops", "hands_detected"}


def _clean(x):
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else ("nan" if math.isnan(x) else ("inf" if x > 0 else "-inf"))
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, Path):
        return str(x)
    return x


def _unclean(x):
    if isinstance(x, dict):
        return {k: _unclean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_unclean(v) for v in x]
    if x in ("inf", "-inf", "nan"):
        return float(x)
    return x


def load_json(path) -> dict:
    return _unclean(json.loads(Path(path).read_text()))


def metric_names(results) -> list[str]:
    keys = []
    for r in results:
        for k, v in r.summary.items():
            if k not in NOT_METRICS and isinstance(v, (int, float)) and k not in keys:
                keys.append(k)
    return sorted(keys, key=lambda k: (ORDER.index(k) if k in ORDER else len(ORDER), k))


def higher_is_better(metric: str) -> bool:
    from .runner import HIGHER_IS_BETTER

    return HIGHER_IS_BETTER.get(metric, False)  # Fréchet distances: lower is better


def _fmt(v) -> str:
    if v is None:
        return "–"
    v = float(v)
    if math.isnan(v):
        return "n/a"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v == 0 or abs(v) >= 10:
        return f"{v:.2f}"
    return f"{v:.4f}" if abs(v) >= 0.1 else f"{v:.3g}"


def bar_charts(results, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    runs = [r.name for r in results]
    for m in metric_names(results):
        vals = [r.summary.get(m, float("nan")) for r in results]
        fig, ax = plt.subplots(figsize=(max(3.5, 1.1 * len(runs) + 1.5), 3.2))
        finite = [v if v is not None and math.isfinite(v) else 0.0 for v in vals]
        bars = ax.bar(runs, finite, color=[f"C{i}" for i in range(len(runs))])
        for b, v in zip(bars, vals):
            ax.annotate(_fmt(v), (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom",
                        fontsize=8, xytext=(0, 2), textcoords="offset points")
        ax.set_title(f"{m} ({'higher' if higher_is_better(m) else 'lower'} is better)", fontsize=10)
        ax.margins(y=0.15)
        ax.tick_params(axis="x", labelrotation=20 if len(runs) > 3 else 0, labelsize=8)
        fig.tight_layout()
        p = out_dir / f"bar_{m}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def worst_crops_strip(result, out_dir: Path) -> Path | None:
    """PNG: worst hand crops by SSIM, generated (top row) above reference (bottom row)."""
    crops = result.worst_crops
    if not crops:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(crops)
    fig, axes = plt.subplots(2, n, figsize=(1.9 * n + 0.6, 4.3), squeeze=False)
    for i, c in enumerate(crops):
        axes[0, i].imshow(c.generated)
        axes[1, i].imshow(c.reference)
        axes[0, i].set_title(f"{getattr(c, 'video', '')} f{c.frame}\nSSIM {c.ssim:.3f}", fontsize=7)
        for ax in axes[:, i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("generated", fontsize=8)
    axes[1, 0].set_ylabel("reference", fontsize=8)
    fig.suptitle(f"{result.name}: worst hand crops (lowest SSIM-Hand)", fontsize=9)
    fig.tight_layout()
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in result.name)
    p = out_dir / f"worst_hand_crops_{safe}.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p


def write_report(results, info: dict, protocol, out_dir) -> dict:
    """Write metrics.json, report.md and PNGs into out_dir; returns {kind: path(s)}."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out: {str(out_dir)!r} is a file; give a folder for the report")
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in (*out_dir.glob("bar_*.png"), *out_dir.glob("worst_hand_crops_*.png")):  # an earlier report's
        old.unlink()
    charts = bar_charts(results, out_dir) if len(results) > 1 else []
    strips = [p for p in (worst_crops_strip(r, out_dir) for r in results) if p is not None]
    data = {
        "protocol": protocol.to_dict(),
        "variants": VARIANTS,
        "json_non_finite": "inf/-inf/nan are written as strings",
        **info,
        "runs": {r.name: {"path": r.path, "summary": r.summary, "videos": r.videos} for r in results},
        "pictures": [p.name for p in charts + strips],
    }
    (out_dir / "metrics.json").write_text(json.dumps(_clean(data), indent=2) + "\n")

    metrics = metric_names(results)
    lines = ["# Evaluation report", "",
             f"Reference: `{info.get('reference')}`; {len(info.get('videos', []))} videos; "
             f"hand crops from: {info.get('hand_source') or 'none (no --poses, no detector)'}.", "",
             "| run | frames | " + " | ".join(f"{m} {'↑' if higher_is_better(m) else '↓'}" for m in metrics) + " |",
             "| --- | ---: | " + " | ".join("---:" for _ in metrics) + " |"]
    for r in results:
        lines.append(f"| {r.name} | {r.summary.get('frames', '')} | "
                     + " | ".join(_fmt(r.summary.get(m)) for m in metrics) + " |")
    lines += ["", "## Per video", ""]
    for r in results:
        vm = [m for m in metrics if any(m in v for v in r.videos.values())]
        lines += [f"### {r.name}", "", "| video | frames | " + " | ".join(vm) + " |",
                  "| --- | ---: | " + " | ".join("---:" for _ in vm) + " |"]
        for name, v in r.videos.items():
            lines.append(f"| {name} | {v['frames']} | " + " | ".join(_fmt(v.get(m)) for m in vm) + " |")
        lines.append("")
    lines += ["## Variants", ""] + [f"- **{k}**: {v}" for k, v in VARIANTS.items()] + [""]
    if charts or strips:
        lines += ["## Pictures", ""] + [f"![{p.stem}]({p.name})" for p in charts + strips] + [""]
    (out_dir / "report.md").write_text("\n".join(lines))
    return {"json": out_dir / "metrics.json", "markdown": out_dir / "report.md", "charts": charts, "strips": strips}
