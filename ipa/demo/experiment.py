"""The ablation driver: self-generate -> auto-select -> curate -> train (several recipes, seeds) -> evaluate.

    from ipa.demo.experiment import run, FULL, QUICK
    run("demo_out", FULL)

1. **Self-generate** `candidates` videos for each of `gen_conditions` training conditions with the
   base model (`ipa.generate.sample`, Euler flow matching, fixed per-candidate seeds).
2. **Select** (stand-in for the paper's annotator): score every candidate by its hand-region MSE
   against the renderer's ground truth; keep each condition's best candidate, then the `curated`
   best of those. Only good samples, no pairs, as in the paper.
3. **Curate** them into an `ipa.data` shard dataset: the candidate's own latents as ``x0``, the
   condition's control, text embedding and hand mask.
4. **Train** from the same base, same samples, same steps, for every recipe and seed, through
   `ipa train --nproc 2` (2 ranks, ZeRO-2 on gloo, LoRA on q/k/v, adapter-disabled reference).
5. **Evaluate** on held-out conditions: one sample per condition with the same noise seed for
   every model (paired comparison), scored by `ipa.demo.metrics` (hand PSNR/SSIM via ipa.eval).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from . import metrics, task

BASE = Path(__file__).parent / "assets" / "base"
GEN_SEEDS = 3_000_000  # training conditions start here; held-out ones at EVAL_SEEDS
EVAL_SEEDS = 4_000_000


@dataclass(frozen=True)
class Recipe:
    """One row of the ablation: objective, HALO hand weight, beta (IPA only)."""
    name: str
    objective: str  # "sft" | "ipa"
    hand_weight: float
    beta: float = 600.0


RECIPES = {
    "sft": Recipe("SFT", "sft", 1.0),
    "sft_halo": Recipe("SFT + HALO", "sft", 10.0),
    "ipa": Recipe("IPA w/o HALO", "ipa", 1.0),
    "ipa_halo": Recipe("IPA + HALO", "ipa", 10.0),
}


def beta_recipe(beta: float) -> tuple[str, Recipe]:
    return f"ipa_halo_b{beta:g}", Recipe(f"IPA + HALO, beta={beta:g}", "ipa", 10.0, beta)


@dataclass(frozen=True)
class Plan:
    """Sizes of one demo run (`FULL` for `make demo`, `QUICK` for CI)."""
    gen_conditions: int = 100
    candidates: int = 4  # as in the paper
    curated: int = 90  # the paper curated 93
    eval_conditions: int = 20
    seeds: tuple = (0, 1, 2)
    recipes: tuple = ("sft", "sft_halo", "ipa", "ipa_halo")
    betas: tuple = (60.0, 6000.0)  # extra betas for IPA + HALO (600 is in the main rows)
    beta_seeds: tuple = (0,)
    steps: int = 30
    micro_batch: int = 2  # x 2 ranks = batch 4 (the paper: 8); sized for the 15-minute budget
    lr: float = 5e-4
    lora_rank: int = 16
    sample_steps: int = metrics.SAMPLE_STEPS
    nproc: int = 2


FULL = Plan()
QUICK = Plan(gen_conditions=4, candidates=2, curated=3, eval_conditions=2, seeds=(0,), recipes=("sft", "ipa_halo"),
             betas=(), beta_seeds=(), steps=2, micro_batch=1, sample_steps=3)


def runs_of(plan: Plan) -> list[tuple[str, Recipe, int]]:
    """(key, recipe, seed) of every training run of the plan."""
    out = [(k, RECIPES[k], s) for k in plan.recipes for s in plan.seeds]
    for b in plan.betas:
        k, r = beta_recipe(b)
        out += [(k, r, s) for s in plan.beta_seeds]
    return out


def load_base(path=BASE):
    from ipa.models import build_transformer

    model = build_transformer("wan-vace", str(path), dtype=torch.float32, attention_backend="native")
    return model.eval()


# ----------------------------------------------------------------------------- 1-3: data

def say(msg: str) -> None:
    """The demo's log line: flushed, so `make demo | tee` shows it as it happens."""
    print(msg, flush=True)


def self_generate_and_curate(out: Path, plan: Plan, base=BASE, log=say) -> dict:
    """Steps 1-3; returns the selection record (also written to OUT/selection.json)."""
    from ipa.data import ShardWriter

    model = load_base(base)
    conds = {s: task.condition(s) for s in range(GEN_SEEDS, GEN_SEEDS + plan.gen_conditions)}
    keys = [(s, k) for s in conds for k in range(plan.candidates)]
    from ipa.generate import candidate_seed

    t0 = time.time()
    lat = metrics.sample_videos(model, [conds[s] for s, _ in keys],
                                [candidate_seed(0, f"c{s}", k) for s, k in keys], steps=plan.sample_steps,
                                desc="self-generating candidates")
    log(f"generated {len(keys)} candidates in {time.time() - t0:.0f} s")
    err = {(s, k): metrics.hand_error(z, conds[s]) for (s, k), z in zip(keys, lat)}
    best = {s: min(range(plan.candidates), key=lambda k: err[s, k]) for s in conds}
    chosen = sorted(conds, key=lambda s: err[s, best[s]])[:plan.curated]
    latents = dict(zip(keys, lat))
    with ShardWriter(out / "curated", family="wan-vace", samples_per_shard=32, source="ipa demo self-generation") as w:
        for s in chosen:
            w.add(f"c{s}-cand{best[s]}", task.sample_tensors(conds[s], latents[s, best[s]]))
    all_err = np.array(list(err.values()))
    sel = {"candidates": len(keys), "curated": len(chosen),
           "hand_mse_all_mean": float(all_err.mean()),
           "hand_mse_best_per_condition_mean": float(np.mean([err[s, best[s]] for s in conds])),
           "hand_mse_curated_mean": float(np.mean([err[s, best[s]] for s in chosen])),
           "chosen": [f"c{s}-cand{best[s]}" for s in chosen]}
    sel["settings"] = generation_settings(plan, base)
    (out / "selection.json").write_text(json.dumps(sel, indent=1))
    return sel


def generation_settings(plan: Plan, base=BASE) -> dict:
    """What the curated samples depend on (the base model's weights by digest, not by path): data
    made with other settings are never reused."""
    import hashlib

    digest = hashlib.sha256()
    for f in sorted(Path(base).glob("*")):
        if f.suffix in (".json", ".safetensors"):
            digest.update(f.name.encode() + f.read_bytes())
    return {"base_sha256": digest.hexdigest()[:16], "gen_conditions": plan.gen_conditions,
            "candidates": plan.candidates, "curated": plan.curated, "sample_steps": plan.sample_steps}


def has_curated(folder: Path) -> bool:
    return (Path(folder) / "selection.json").is_file() and (Path(folder) / "curated" / "manifest.jsonl").is_file()


def settings_mismatch(folder: Path, settings: dict) -> str | None:
    """Why the curated samples in FOLDER were not made with `settings`, or None when they were."""
    saved = json.loads((Path(folder) / "selection.json").read_text()).get("settings")
    if saved is None:
        return "its selection.json records no generation settings (written by an older ipa)"
    diff = [f"{k}={saved.get(k)!r} (this plan: {v!r})" for k, v in settings.items() if saved.get(k) != v]
    return "they were generated with " + ", ".join(diff) if diff else None


def curated_samples(out: Path, plan: Plan, base=BASE, log=say) -> dict:
    """The selection record of OUT's curated samples: reused when made with this plan's generation
    settings (so a variant trains on exactly the same samples), else generated anew."""
    why = settings_mismatch(out, generation_settings(plan, base)) if has_curated(out) else ""
    if why is None:
        return json.loads((out / "selection.json").read_text())
    import shutil

    if why:
        log(f"generating anew: the curated samples in {out} do not fit this plan ({why})")
    shutil.rmtree(out / "curated", ignore_errors=True)
    return self_generate_and_curate(out, plan, base, log)


# ----------------------------------------------------------------------------- 4: training

def train_config(out: Path, plan: Plan, recipe: Recipe, seed: int, run_dir: Path, base=BASE) -> dict:
    return {
        "model": {"family": "wan-vace", "source": str(Path(base).resolve()), "dtype": "float32",
                  "attention_backend": "native"},
        "lora": {"enabled": True, "rank": plan.lora_rank, "alpha": plan.lora_rank},
        "reference": {"mode": "adapter"},
        "objective": {"name": recipe.objective, "beta": recipe.beta, "hand_weight": recipe.hand_weight},
        "deepspeed": {"zero_stage": 2},
        "optimizer": {"lr": plan.lr, "warmup_steps": max(1, plan.steps // 10)},
        "data": {"path": str((out / "curated").resolve()), "micro_batch": plan.micro_batch},
        "run": {"steps": plan.steps, "seed": seed, "output_dir": str(run_dir.resolve()), "save_every": 0,
                "log_every": 1},
    }


def train_one(out: Path, plan: Plan, key: str, recipe: Recipe, seed: int, base=BASE, log=say) -> Path:
    """Run `ipa train --nproc N` for one recipe and seed; returns its exported LoRA folder."""
    run_dir = out / "runs" / f"{key}-s{seed}"
    lora = run_dir / "lora"
    cfg_path = out / "configs" / f"{key}-s{seed}.yaml"
    cfg_text = yaml.safe_dump(train_config(out, plan, recipe, seed, run_dir, base), sort_keys=False)
    if (lora / "pytorch_lora_weights.safetensors").is_file() and cfg_path.is_file() and cfg_path.read_text() == cfg_text:
        return lora  # done in an earlier invocation, with the same settings
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)  # interrupted, or other settings: start it over
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(cfg_text)
    cmd = [sys.executable, "-m", "ipa.cli", "train", "--config", str(cfg_path), "--nproc", str(plan.nproc)]
    t0 = time.time()
    logf = out / "logs" / f"{key}-s{seed}.log"
    logf.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(logf, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0:
        raise RuntimeError(f"training {key} seed {seed} failed (exit {rc}); see {logf}")
    log(f"trained {recipe.name} seed {seed} in {time.time() - t0:.0f} s")
    return lora


# ----------------------------------------------------------------------------- 5: evaluation

def eval_conditions(plan: Plan) -> list[dict]:
    return [task.condition(s) for s in range(EVAL_SEEDS, EVAL_SEEDS + plan.eval_conditions)]


def evaluate_model(model, conds, plan: Plan) -> tuple[list[dict], list]:
    """Per-condition scores and latents; noise seed = condition seed for every model (paired)."""
    lat = metrics.sample_videos(model, conds, list(range(EVAL_SEEDS, EVAL_SEEDS + len(conds))),
                                steps=plan.sample_steps)
    return [metrics.score(z, c) for z, c in zip(lat, conds)], lat


def evaluate_lora(lora: Path, conds, plan: Plan, base=BASE):
    from ipa.models import load_lora

    model = load_lora(load_base(base), str(lora))
    return evaluate_model(model, conds, plan)


# ----------------------------------------------------------------------------- driver

def run(out, plan: Plan = FULL, base=BASE, log=say) -> dict:
    """The whole experiment into `out`; returns (and writes) OUT/results.json."""
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings, t_all = {}, time.time()
    t0 = time.time()
    selection = curated_samples(out, plan, base, log)
    timings["generate_select_curate_s"] = time.time() - t0
    log(f"curated {selection['curated']} of {selection['candidates']} candidates "
        f"(hand MSE: all {selection['hand_mse_all_mean']:.0f}, curated {selection['hand_mse_curated_mean']:.0f})")

    t0 = time.time()
    runs = runs_of(plan)
    log(f"training {len(runs)} LoRA runs with `ipa train --nproc {plan.nproc}` (logs: {out / 'logs'})")
    loras = {(k, s): train_one(out, plan, k, r, s, base, log) for k, r, s in runs}
    timings["train_s"] = time.time() - t0

    t0 = time.time()
    from tqdm.auto import tqdm

    conds = eval_conditions(plan)
    scores, samples = {}, {}
    models = [(("base", 0), None), *loras.items()]
    for (k, s), lora in tqdm(models, desc=f"evaluating on {len(conds)} held-out conditions", unit="model"):
        scores[k, s], samples[k, s] = (evaluate_model(load_base(base), conds, plan) if lora is None
                                       else evaluate_lora(lora, conds, plan, base))
    timings["eval_s"] = time.time() - t0
    timings["total_s"] = time.time() - t_all

    names = {"base": "Base (no training)", **{k: r.name for k, r, _ in runs_of(plan)}}
    results = {
        "plan": dataclasses.asdict(plan), "selection": {k: v for k, v in selection.items() if k != "chosen"},
        "timings": timings, "names": names,
        "runs": [{"key": k, "name": names[k], "seed": s, "mean": metrics.mean_scores(v), "per_condition": v}
                 for (k, s), v in scores.items()],
    }
    for (k, s), lat in samples.items():  # decoded eval videos for the report's crop strip
        np.save(out / "samples" / f"{k}-s{s}.npy" if _mk(out / "samples") else None,
                np.stack([task.decode(z) for z in lat]))
    np.save(out / "samples" / "ground_truth.npy", np.stack([c["video"] for c in conds]))
    np.save(out / "samples" / "hands.npy", np.stack([c["hands"] for c in conds]))
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return results


def _mk(path: Path) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return True
