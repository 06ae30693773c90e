"""The demo's report: Markdown table, bar chart, hand-crop strip, from OUT/results.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

METRICS = (("hand_psnr", "hand PSNR (dB)"), ("hand_ssim", "hand SSIM"), ("nonhand_psnr", "non-hand PSNR (dB)"))
STRIP_COLUMNS = (("ground truth", None), ("base", "base"), ("SFT", "sft"), ("IPA + HALO", "ipa_halo"))


def aggregate(results: dict) -> dict:
    """key -> {"name", "seeds", metric: (mean over seeds, std over seeds)}, in run order."""
    rows = {}
    for r in results["runs"]:
        rows.setdefault(r["key"], {"name": r["name"], "per_seed": []})["per_seed"].append(r["mean"])
    for row in rows.values():
        row["seeds"] = len(row["per_seed"])
        for m, _ in METRICS:
            v = np.array([p[m] for p in row["per_seed"]])
            row[m] = (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0)
    return rows


def paired_delta(results: dict, a: str, b: str, metric: str = "hand_psnr"):
    """Per-seed `a - b` of `metric` (both evaluated on the same conditions and noise); None if absent."""
    by = {(r["key"], r["seed"]): r["mean"][metric] for r in results["runs"]}
    seeds = sorted(s for k, s in by if k == a and (b, s) in by)
    return np.array([by[a, s] - by[b, s] for s in seeds]) if seeds else None


def markdown(results: dict) -> str:
    rows = aggregate(results)
    base = rows.get("base", {}).get("hand_psnr", (np.nan,))[0]
    lines = ["| method | seeds | " + " | ".join(n for _, n in METRICS) + " | hand PSNR vs base |",
             "| --- | ---: | " + " | ".join("---:" for _ in METRICS) + " | ---: |"]
    for row in rows.values():
        cells = [f"{row[m][0]:.3f} ± {row[m][1]:.3f}" if m == "hand_ssim" else f"{row[m][0]:.2f} ± {row[m][1]:.2f}"
                 for m, _ in METRICS]
        lines.append(f"| {row['name']} | {row['seeds']} | " + " | ".join(cells) + f" | {row['hand_psnr'][0] - base:+.2f} |")
    d = paired_delta(results, "ipa_halo", "sft")
    notes = ["", "mean ± standard deviation over training seeds (one sample per held-out condition, the "
             "same noise for every model)."]
    if d is not None:
        spread = f" ± {d.std(ddof=1):.2f}" if len(d) > 1 else ""
        notes.append(f"IPA + HALO minus SFT, hand PSNR, paired by seed: {d.mean():+.2f}{spread} dB "
                     f"(per seed: {', '.join(f'{x:+.2f}' for x in d)}).")
    sel = results.get("selection", {})
    if sel:
        gain = 10 * np.log10(sel["hand_mse_all_mean"] / sel["hand_mse_curated_mean"])
        notes.append(f"Curated {sel['curated']} of {sel['candidates']} self-generated candidates; hand-region MSE "
                     f"all {sel['hand_mse_all_mean']:.0f}, curated {sel['hand_mse_curated_mean']:.0f}: the curated "
                     f"set's hands are {gain:+.2f} dB better than an average sample's (what imitating it can gain).")
    return "\n".join(lines + notes) + "\n"


def bar_chart(results: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = aggregate(results)
    names = [r["name"] for r in rows.values()]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 0.45 * len(names) + 1.6))
    for ax, (m, label) in zip(axes, METRICS):
        mean = [r[m][0] for r in rows.values()]
        std = [r[m][1] for r in rows.values()]
        ax.barh(range(len(names)), mean, xerr=std, color=["#999"] + ["#4477aa"] * (len(names) - 1), capsize=3)
        ax.set_yticks(range(len(names)), names if ax is axes[0] else [""] * len(names))
        lo, hi = min(mean) - max(std + [0]) * 2, max(mean) + max(std + [0]) * 2
        pad = (hi - lo) * 0.3 + 1e-3
        ax.set_xlim(lo - pad, hi + pad)
        ax.invert_yaxis()
        ax.set_title(label)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("ipa demo: held-out conditions (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def crop_strip(out: Path, path: Path, n: int = 6, scale: int = 4) -> Path | None:
    """Rows of eval conditions; columns ground truth, base, SFT, IPA + HALO (seed 0): middle-frame hand crops."""
    import cv2

    from ipa.eval.hands import crop, hand_box

    sdir = out / "samples"
    videos = {}
    for label, key in STRIP_COLUMNS:
        f = sdir / ("ground_truth.npy" if key is None else f"{key}-s0.npy")
        if not f.is_file():
            return None
        videos[label] = np.load(f)
    hands = np.load(sdir / "hands.npy")
    t = hands.shape[1] // 2 + 2  # a frame inside a later latent group
    rows = []
    for i in range(min(n, len(hands))):
        box = hand_box(hands[i, t, 0], padding=0.3)
        cells = [cv2.resize(crop(videos[label][i, t], box, 32), (32 * scale, 32 * scale),
                            interpolation=cv2.INTER_NEAREST) for label, _ in STRIP_COLUMNS]
        rows.append(np.concatenate([np.pad(c, ((2, 2), (2, 2), (0, 0)), constant_values=255) for c in cells], 1))
    img = np.concatenate(rows, 0)
    head = np.full((24, img.shape[1], 3), 255, np.uint8)
    w = img.shape[1] // len(STRIP_COLUMNS)
    for j, (label, _) in enumerate(STRIP_COLUMNS):
        cv2.putText(head, label, (j * w + 6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate([head, img], 0), cv2.COLOR_RGB2BGR))
    return path


def write_report(out) -> dict:
    """Write OUT/results.md, OUT/ablation.png, OUT/hand_crops.png; returns their paths."""
    out = Path(out)
    results = json.loads((out / "results.json").read_text())
    md = markdown(results)
    t = results.get("timings", {})
    md += "\nTimings: " + ", ".join(f"{k} {v:.0f} s" for k, v in t.items()) + "\n"
    (out / "results.md").write_text(md)
    files = {"table": out / "results.md", "chart": bar_chart(results, out / "ablation.png"),
             "crops": crop_strip(out, out / "hand_crops.png")}
    return {k: str(v) for k, v in files.items() if v is not None}
