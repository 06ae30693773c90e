"""Training throughput and memory per rank: SFT vs IPA (each reference mode) and ZeRO stages.

    python -m benchmarks.train [--steps 8] [--nproc 2]
    ipa bench train

Each configuration is a real `ipa train` launch (2 gloo ranks on CPU, the tiny Wan-VACE config);
steps/s are taken from the run's own metrics (median of samples/s after the first two steps),
peak memory per rank from its `peak_memory_mb`. Writes benchmarks/results/train-<device>.csv/.png.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from .common import RESULTS, device_name, device_slug, print_table, versions, write_csv

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny-cpu.yaml"
VARIANTS = [  # (name, overrides)
    ("sft zero2", ["objective.name=sft", "deepspeed.zero_stage=2"]),
    ("ipa-adapter zero2", ["reference.mode=adapter", "deepspeed.zero_stage=2"]),
    ("ipa-copy zero2", ["reference.mode=copy", "deepspeed.zero_stage=2"]),
    ("ipa-precomputed zero2", ["reference.mode=precomputed", "deepspeed.zero_stage=2"]),
    ("sft zero3", ["objective.name=sft", "deepspeed.zero_stage=3"]),
    ("ipa-copy zero3", ["reference.mode=copy", "deepspeed.zero_stage=3"]),
]


def run(variant, overrides, data, store, steps, nproc, workdir):
    out = Path(workdir) / variant.replace(" ", "_")
    extra = [f"reference.store={store}", "reference.draws=2"] if "precomputed" in variant else []
    cmd = [sys.executable, "-m", "ipa.cli", "train", "--config", str(CONFIG), "--nproc", str(nproc),
           "--output-dir", str(out), f"data.path={data}", f"run.steps={steps}", "run.save_every=0",
           "run.export=false", *overrides, *extra]
    subprocess.run(cmd, check=True, capture_output=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steady = rows[2:] or rows
    sps = statistics.median(r["samples_per_s"] for r in steady)
    return {"variant": variant, "steps": steps, "ranks": nproc,
            "samples_per_s": round(sps, 2), "steps_per_s": round(sps / (2 * nproc), 3),
            "peak_memory_mb_rank0": round(max(r["peak_memory_mb"] for r in rows), 1)}


def main(argv=None):
    p = argparse.ArgumentParser(prog="ipa bench train", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--out-dir", default=str(RESULTS))
    args = p.parse_args(argv)
    from ipa.data import synthesize

    info = {"device": device_name(torch.device("cpu")), **versions()}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = synthesize(Path(tmp) / "data", n=16)
        store = Path(tmp) / "ref.safetensors"
        subprocess.run([sys.executable, "-m", "ipa.cli", "precompute-reference", "--config", str(CONFIG),
                        "--nproc", str(args.nproc), "--draws", "2", "--out", str(store),
                        "--output-dir", str(Path(tmp) / "pre"), f"data.path={data}"], check=True, capture_output=True)
        for name, overrides in VARIANTS:
            rows.append({**info, **run(name, overrides, data, store, args.steps, args.nproc, tmp)})
            print(f"{name}: {rows[-1]['samples_per_s']} samples/s", flush=True)
    base = {r["variant"].split()[1]: r["samples_per_s"] for r in rows if r["variant"].startswith("sft")}
    for r in rows:
        r["time_vs_sft_same_stage"] = round(base[r["variant"].split()[1]] / r["samples_per_s"], 2)
    stem = Path(args.out_dir) / f"train-{device_slug(torch.device('cuda' if torch.cuda.is_available() else 'cpu'))}"
    write_csv(stem.with_suffix(".csv"), rows)
    plot(rows, stem.with_suffix(".png"))
    print_table(rows, ["variant", "samples_per_s", "steps_per_s", "peak_memory_mb_rank0", "time_vs_sft_same_stage"])
    return 0


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    names = [r["variant"] for r in rows]
    axes[0].barh(names, [r["samples_per_s"] for r in rows])
    axes[0].set_xlabel("samples/s (2 ranks)")
    axes[1].barh(names, [r["peak_memory_mb_rank0"] for r in rows])
    axes[1].set_xlabel("peak memory, rank 0 (MB)")
    fig.suptitle(f"ipa train, tiny Wan-VACE on {rows[0]['device']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
