"""Training throughput and memory per rank: SFT vs IPA (each reference mode) and ZeRO stages.

    python -m benchmarks.train [--steps 20] [--nproc 2] [--repeats 2]
    ipa bench train

Each configuration is a real `ipa train` launch (2 gloo ranks on CPU, the tiny Wan-VACE config);
steps/s are taken from the run's own metrics (median of samples/s after the first two steps),
peak memory of every rank from its `rank<N>.json`, and rank 0's CPU time per step (process
time: other tenants of a shared CPU inflate wall time far more than it). The variants run round-robin `--repeats`
times and each keeps its best repeat: on a shared machine the other tenants only ever slow a run
down, and interleaving spreads slow phases over all variants instead of one.
Writes benchmarks/results/train-<device>.csv/.png.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from .common import RESULTS, bounded, device_name, device_slug, print_table, versions, write_csv

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
    micro = 2  # tiny-cpu.yaml's data.micro_batch (grad_accum 1)
    cpu_ms = 1000 * statistics.median(r["cpu_s_per_step"] for r in steady)
    row = {"variant": variant, "steps": steps, "ranks": nproc,
           "samples_per_s": round(sps, 2), "steps_per_s": round(sps / (micro * nproc), 3),
           "cpu_ms_per_step_rank0": round(cpu_ms, 1)}
    for r in range(nproc):
        row[f"peak_memory_mb_rank{r}"] = round(json.loads((out / f"rank{r}.json").read_text())["peak_memory_mb"], 1)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(prog="ipa bench train", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=bounded(int, 1), default=20)
    p.add_argument("--nproc", type=bounded(int, 1), default=None,
                   help="ranks (default 2; on CUDA at most one per GPU)")
    p.add_argument("--repeats", type=bounded(int, 1), default=2, help="round-robin passes; each variant keeps its best")
    p.add_argument("--out-dir", default=str(RESULTS))
    args = p.parse_args(argv)
    from ipa.data import synthesize

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # where the runs train
    if args.nproc is None:
        args.nproc = min(2, torch.cuda.device_count()) if dev.type == "cuda" else 2
    info = {"device": device_name(dev), **versions()}
    with tempfile.TemporaryDirectory() as tmp:
        data = synthesize(Path(tmp) / "data", n=16)
        store = Path(tmp) / "ref.safetensors"
        subprocess.run([sys.executable, "-m", "ipa.cli", "precompute-reference", "--config", str(CONFIG),
                        "--nproc", str(args.nproc), "--draws", "2", "--out", str(store),
                        "--output-dir", str(Path(tmp) / "pre"), f"data.path={data}"], check=True, capture_output=True)
        runs = {name: [] for name, _ in VARIANTS}
        for rep in range(args.repeats):
            for name, overrides in VARIANTS:
                r = run(name, overrides, data, store, args.steps, args.nproc, Path(tmp) / f"rep{rep}")
                print(f"{name} (pass {rep + 1}): {r['samples_per_s']} samples/s, "
                      f"{r['cpu_ms_per_step_rank0']} CPU ms/step", flush=True)
                runs[name].append(r)
        rows = []
        for reps in runs.values():  # best repeat: the one least disturbed by other tenants
            row = max(reps, key=lambda r: r["samples_per_s"])
            rows.append({**info, **row, "cpu_ms_per_step_rank0": min(r["cpu_ms_per_step_rank0"] for r in reps)})
    base = {r["variant"].split()[1]: r for r in rows if r["variant"].startswith("sft")}
    for r in rows:
        sft = base[r["variant"].split()[1]]
        r["time_vs_sft_same_stage"] = round(sft["samples_per_s"] / r["samples_per_s"], 2)
        r["cpu_time_vs_sft_same_stage"] = round(r["cpu_ms_per_step_rank0"] / sft["cpu_ms_per_step_rank0"], 2)
    stem = Path(args.out_dir) / f"train-{device_slug(dev)}"
    write_csv(stem.with_suffix(".csv"), rows)
    plot(rows, stem.with_suffix(".png"))
    print_table(rows, ["variant", "samples_per_s", "steps_per_s", "cpu_ms_per_step_rank0", "peak_memory_mb_rank0",
                       "time_vs_sft_same_stage", "cpu_time_vs_sft_same_stage"])
    return 0


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8), sharey=True)
    names = [r["variant"] for r in rows]
    for ax, key, label in zip(axes, ("samples_per_s", "cpu_ms_per_step_rank0", "peak_memory_mb_rank0"),
                              ("samples/s (2 ranks, wall)", "CPU ms per step, rank 0", "peak memory, rank 0 (MB)")):
        ax.barh(names, [r[key] for r in rows])
        ax.set_xlabel(label)
    fig.suptitle(f"ipa train, tiny Wan-VACE on {rows[0]['device']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
