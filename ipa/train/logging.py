"""What a run reports: a rank-0 progress bar, metrics.jsonl, TensorBoard, a loss-curve PNG."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ipa.data.shards import atomic_write_text


def read_metrics(path) -> list[dict]:
    """The rows of a `metrics.jsonl`; a last line cut short by a kill mid-write is dropped."""
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise ValueError(f"{path}: line {i + 1} is not JSON") from None
    return rows


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def write_config(output_dir, text: str, start_step: int) -> None:
    """`config.yaml` of the run (atomic). A resume from step N with another config first keeps the
    one steps 1..N ran with as `config.until-stepN.yaml`, and says which keys changed."""
    import yaml

    path = Path(output_dir) / "config.yaml"
    if start_step and path.is_file():
        before, now = _flat(yaml.safe_load(path.read_text()) or {}), _flat(yaml.safe_load(text))
        changed = [f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in dict.fromkeys([*before, *now])
                   if k != "run.resume" and before.get(k) != now.get(k)]
        if changed:
            kept = path.with_name(f"config.until-step{start_step:08d}.yaml")
            os.replace(path, kept)
            print(f"resume: the config differs from the one steps 1-{start_step} ran with ({'; '.join(changed)}); "
                  f"that one is kept as {kept.name}", file=sys.stderr, flush=True)
    atomic_write_text(path, text)


class RunLog:
    """Rank 0 only. `metrics.jsonl` gets one JSON object per step (`step`, `loss`, ...), flushed
    each step; on resume, lines after the resumed step (from the killed run) are dropped."""

    def __init__(self, output_dir, total_steps: int, start_step: int):
        from torch.utils.tensorboard import SummaryWriter
        from tqdm.auto import tqdm

        self.dir = Path(output_dir)
        self.path = self.dir / "metrics.jsonl"
        kept = [row for row in read_metrics(self.path) if row["step"] <= start_step] if self.path.is_file() else []
        # atomic: a kill here keeps the old log whole
        atomic_write_text(self.path, "".join(json.dumps(row) + "\n" for row in kept))
        self.file = open(self.path, "a")  # noqa: SIM115 (held for the run, closed in close())
        self.tb = SummaryWriter(str(self.dir / "tensorboard"), purge_step=start_step + 1)
        self.bar = tqdm(total=total_steps, initial=start_step, desc="ipa train", unit="step", dynamic_ncols=True)

    def log(self, row: dict):
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)):
                self.tb.add_scalar(f"train/{k}", v, row["step"])
        self.bar.update(1)
        self.bar.set_postfix({k: f"{row[k]:.4g}" for k in ("loss", "ipa_gap") if k in row})

    def close(self):
        self.bar.close()
        self.tb.close()
        self.file.close()
        plot_losses(self.path, self.dir / "loss.png")


def plot_losses(metrics_path, png_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    if not rows:
        return
    keys = [k for k in ("loss", "ipa_gap", "implicit_accuracy") if k in rows[0]]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.2), squeeze=False)
    for ax, k in zip(axes[0], keys):
        ax.plot([r["step"] for r in rows], [r[k] for r in rows])
        ax.set_xlabel("step")
        ax.set_title(k)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
