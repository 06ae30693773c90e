"""`ipa precompute-reference`: the reference's per-sample errors over deterministic draws, once,
so that training holds no reference model (reference.mode = precomputed).

Every rank evaluates its share of the samples (the pretrained model under the run's ZeRO stage);
rank 0 gathers the errors and writes the store. Training with `reference.draws = K` regenerates
exactly these (noise, t) draws (`ipa.models.flow_draw`).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from ipa import models
from ipa.data import ShardDataset, collate
from ipa.ops import halo_error

from . import engines
from .config import TrainConfig, validate
from .loop import flow_inputs, init_distributed, to_device


def precompute(cfg: TrainConfig, draws: int, out_path=None) -> Path:
    if not (isinstance(draws, int) and draws >= 1):
        raise ValueError(f"--draws must be an int >= 1, got {draws!r}")
    device = init_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    validate(cfg, world_size=None)
    out_path = Path(out_path or cfg.reference.store or Path(cfg.run.output_dir) / "reference_errors.safetensors")
    dataset = ShardDataset(cfg.data.path)
    conf = engines.deepspeed_config(cfg, world, stage=cfg.deepspeed.zero_stage if cfg.deepspeed.zero_stage == 3 else 0,
                                    inference=True)
    model = engines._build_model(cfg, device, conf, zero3=conf["zero_optimization"]["stage"] == 3)
    model.requires_grad_(False).eval()
    import deepspeed

    engine, *_ = deepspeed.initialize(model=model, config=conf)
    o = cfg.objective
    mine = list(range(rank, len(dataset), world))
    # Under ZeRO-3 every rank must run the same number of forwards (parameters are gathered
    # collectively), so ranks with fewer samples repeat their last one and drop the result.
    rounds = -(-len(dataset) // world)
    rows = []
    from tqdm.auto import tqdm

    dtype = engines.compute_dtype(cfg)
    for r in tqdm(range(rounds), desc="reference errors", disable=rank != 0):
        i = mine[min(r, len(mine) - 1)]
        batch = to_device(collate([dataset[i]]), device, dtype)
        for d in range(draws):
            draw = flow_inputs(cfg, batch, d)
            with torch.no_grad():
                pred = models.forward(engine, cfg.model.family, batch, draw["noisy"], draw["t"])
                err = halo_error(pred, draw["target"], batch.get("hand_mask"), hand_weight=o.hand_weight,
                                 skip_frames=o.skip_frames)
            if r < len(mine):
                rows.append((batch["sample_id"][0], d, float(draw["t"][0]), float(err[0])))
    gathered = [None] * world
    dist.all_gather_object(gathered, rows)
    if rank == 0:
        store = models.ReferenceStore(draws, seed=cfg.run.seed, sampling=o.timestep_sampling, shift=o.shift,
                                      family=cfg.model.family, hand_weight=o.hand_weight, skip_frames=o.skip_frames,
                                      logit_mean=o.logit_mean, logit_std=o.logit_std, source=str(cfg.model.source),
                                      compute_dtype=_dtype_name(dtype))
        for part in gathered:
            for sid, d, t, e in part:
                store.add(sid, d, t, e)
        part_path = out_path.with_name(out_path.name + ".part")
        store.save(part_path)
        part_path.replace(out_path)
        print(f"wrote {len(store)} samples x {draws} draws of reference errors to {out_path}")
    dist.barrier()
    return out_path


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# config key -> store metadata key: settings that change the stored errors
_STORE_KEYS = {"run.seed": "seed", "objective.timestep_sampling": "sampling", "objective.shift": "shift",
               "model.family": "family", "objective.hand_weight": "hand_weight",
               "objective.skip_frames": "skip_frames", "objective.logit_mean": "logit_mean",
               "objective.logit_std": "logit_std"}


def check_store(cfg: TrainConfig, store, sample_ids) -> None:
    """Refuse, before the first step, a store that cannot serve this run: other draw settings, fewer
    draws than `reference.draws`, or samples of the dataset it does not hold (ValueError naming the key)."""
    for key, meta_key in _STORE_KEYS.items():
        section, name = key.split(".")
        want = getattr(getattr(cfg, section), name)
        if meta_key in store.meta and store.meta[meta_key] != want:
            raise ValueError(f"{key}: the reference store {cfg.reference.store!r} was computed with "
                             f"{store.meta[meta_key]!r}, this run has {want!r} (run `ipa precompute-reference` again)")
    dtype = _dtype_name(engines.compute_dtype(cfg))
    if store.meta.get("compute_dtype", dtype) != dtype:  # bf16 vs fp32 errors differ far above the gaps
        raise ValueError(f"model.dtype: the reference store {cfg.reference.store!r} was computed in "
                         f"{store.meta['compute_dtype']}, this run computes in {dtype} (deepspeed.bf16="
                         f"{cfg.deepspeed.bf16}); run `ipa precompute-reference` with this run's settings")
    if cfg.reference.draws > store.n_draws:
        raise ValueError(f"reference.draws: {cfg.reference.draws} > the {store.n_draws} draws the store holds")
    missing = sorted(set(map(str, sample_ids)) - set(store.sample_ids()))
    if missing:
        raise ValueError(f"reference.store: {cfg.reference.store!r} has no errors for {len(missing)} sample(s) of "
                         f"data.path, e.g. {missing[:3]} (run `ipa precompute-reference` on this dataset)")
