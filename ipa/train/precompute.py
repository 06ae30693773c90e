"""`ipa precompute-reference`: the reference's per-sample errors over deterministic draws, once,
so that training holds no reference model (reference.mode = precomputed).

Every rank evaluates its share of the samples (the pretrained model under the run's ZeRO stage);
rank 0 gathers the errors and writes the store. Training with `reference.draws = K` regenerates
exactly these (noise, t) draws (`ipa.models.flow_draw`).

A pass over a real dataset takes hours, so every `save_every` rounds rank 0 writes the samples
finished so far to `<out>.partial` (atomically); a rerun with the same settings skips them (unless
their data changed: the manifest's sha256 is kept per sample), and a rerun with other settings is
refused before any forward, naming the setting.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist

from ipa import models
from ipa.data import ShardDataset, collate

from . import engines
from .config import TrainConfig, validate
from .loop import flow_inputs, init_distributed, to_device


def precompute(cfg: TrainConfig, draws: int, out_path=None, *, save_every: int = 50) -> Path:
    if not (isinstance(draws, int) and draws >= 1):
        raise ValueError(f"--draws must be an int >= 1, got {draws!r}")
    if not (isinstance(save_every, int) and save_every >= 1):
        raise ValueError(f"--save-every must be an int >= 1 (rounds of one sample per rank), got {save_every!r}")
    device = init_distributed()
    rank = dist.get_rank()
    validate(cfg, world_size=None)
    out_path = store_path(cfg, out_path)
    partial_path = _partial_path(out_path)
    dataset = ShardDataset(cfg.data.path)
    digests = record_digests(dataset.records)
    store = new_store(cfg, draws)
    done = set(_on_rank_0(lambda: _resume(store, partial_path, digests)))
    todo = [i for i, rec in enumerate(dataset.records) if rec["id"] not in done]  # the same on every rank
    if done:
        _say(rank, f"resuming from {partial_path}: {len(dataset) - len(todo)} of {len(dataset)} samples done")
    if todo:
        _compute(cfg, store, dataset, digests, todo, draws, save_every, device, out_path)
    else:  # the partial store holds every sample already (the dataset shrank, or the store was lost)
        _on_rank_0(lambda: _atomic_save(store, out_path))
    if rank == 0:
        partial_path.unlink(missing_ok=True)
        _temporary(partial_path).unlink(missing_ok=True)  # left by a kill mid-write
    losers = " (winner and loser)" if store.meta["losers"] else ""
    _say(rank, f"wrote {len(store)} samples x {draws} draws of reference errors{losers} to {out_path}")
    dist.barrier()
    return out_path


def _compute(cfg, store, dataset, digests, todo, draws, save_every, device, out_path):
    """The forwards over `todo` (dataset indices, split over the ranks), saving the partial store
    every `save_every` rounds and the finished store after the last."""
    rank, world = dist.get_rank(), dist.get_world_size()
    conf = engines.deepspeed_config(cfg, world, stage=cfg.deepspeed.zero_stage if cfg.deepspeed.zero_stage == 3 else 0,
                                    inference=True)
    model = engines._build_model(cfg, device, conf, zero3=conf["zero_optimization"]["stage"] == 3)
    model.requires_grad_(False).eval()
    import deepspeed
    from tqdm.auto import tqdm

    engine, *_ = deepspeed.initialize(model=model, config=conf)
    dtype, losers = engines.compute_dtype(cfg), store.meta["losers"]
    halo_kw = {"hand_weight": cfg.objective.hand_weight, "skip_frames": cfg.objective.skip_frames}
    # Under ZeRO-3 every rank must run the same number of forwards (parameters are gathered
    # collectively), so a rank with fewer samples repeats its last one (or, with none left, the
    # dataset's first) and drops the result.
    mine = todo[rank::world]
    padded = mine or [0]
    rounds = -(-len(todo) // world)
    rows = []
    for r in tqdm(range(rounds), desc="reference errors", disable=rank != 0):
        batch = to_device(collate([dataset[padded[min(r, len(padded) - 1)]]]), device, dtype)
        for d in range(draws):
            draw = flow_inputs(cfg, batch, d)
            err = models.prediction_error(engine, cfg.model.family, batch, draw["noisy"], draw["t"], draw["target"],
                                          **halo_kw)
            err_l = (models.prediction_error(engine, cfg.model.family, batch, draw["noisy_loser"], draw["t"],
                                             draw["target_loser"], **halo_kw) if losers else None)
            if r < len(mine):
                rows.append((batch["sample_id"][0], d, float(draw["t"][0]), float(err[0]),
                             None if err_l is None else float(err_l[0])))
        last = r == rounds - 1
        if last or (r + 1) % save_every == 0:
            gathered = [None] * world
            dist.all_gather_object(gathered, rows)
            rows = []
            if rank == 0:
                for row in (row for part in gathered for row in part):
                    store.add(*row)
                    store.set_digest(row[0], digests[row[0]])
            # a failed write (disk full...) stops every rank, not only rank 0
            _on_rank_0(partial(_atomic_save, store, out_path if last else _partial_path(out_path)))


def _say(rank: int, text: str) -> None:
    if rank == 0:
        print(text, flush=True)


def store_path(cfg: TrainConfig, out_path=None) -> Path:
    """Where the store goes: --out, else reference.store, else OUTPUT/reference_errors.safetensors."""
    return Path(out_path or cfg.reference.store or Path(cfg.run.output_dir) / "reference_errors.safetensors")


def new_store(cfg: TrainConfig, draws: int):
    """An empty store carrying the settings that determine its errors."""
    o = cfg.objective
    return models.ReferenceStore(draws, seed=cfg.run.seed, sampling=o.timestep_sampling, shift=o.shift,
                                 family=cfg.model.family, hand_weight=o.hand_weight, skip_frames=o.skip_frames,
                                 logit_mean=o.logit_mean, logit_std=o.logit_std, source=str(cfg.model.source),
                                 compute_dtype=_dtype_name(engines.compute_dtype(cfg)), losers=o.name == "dpo")


def check_resumable(cfg: TrainConfig, draws: int, out_path=None) -> None:
    """Before launching ranks: refuse a partial store of other settings (rank 0 checks again)."""
    _resume(new_store(cfg, draws), _partial_path(store_path(cfg, out_path)), _manifest_digests(cfg))


def record_digests(records) -> dict:
    """sample id -> sha256 of a dataset's manifest records, in manifest order."""
    return {rec["id"]: rec["sha256"] for rec in records}


def _manifest_digests(cfg: TrainConfig) -> dict:
    from ipa.data.shards import read_manifest

    return record_digests(read_manifest(cfg.data.path)[1])


def _partial_path(out_path: Path) -> Path:
    return out_path.with_name(out_path.name + ".partial")


def _temporary(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def _on_rank_0(fn):
    """`fn()` on rank 0 (reading or writing the store: rank 0's disk alone), its result broadcast to
    every rank; if it raises, every rank raises a ValueError with its message. So the ranks agree on
    the work left, or stop together, instead of waiting in the next collective for a rank that died."""
    verdict = [None]
    if dist.get_rank() == 0:
        try:
            verdict[0] = ("ok", fn())
        except Exception as e:  # whatever it is, the other ranks must hear of it
            verdict[0] = ("error", str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}")
    dist.broadcast_object_list(verdict, src=0)
    status, payload = verdict[0]
    if status == "error":
        raise ValueError(payload)
    return payload


def _resume(store, partial_path: Path, digests: dict) -> list[str]:
    """Load the samples of an earlier, interrupted pass into `store`, keeping only those whose data
    is unchanged (the manifest's sha256); their ids. ValueError if the partial store was made with
    other settings (its errors would not be this run's)."""
    if not partial_path.is_file():
        return []
    try:
        earlier = models.ReferenceStore.load(partial_path)
    except Exception as e:  # a foreign or damaged file: say so rather than overwrite it
        raise ValueError(f"{str(partial_path)!r}: not a readable partial reference store ({e}); "
                         "delete it to start over") from e
    theirs, ours = {"n_draws": earlier.n_draws, **earlier.meta}, {"n_draws": store.n_draws, **store.meta}
    # The model's path is compared too: the other settings do not tell two checkpoints apart, and a
    # store mixing two models' errors would pass every later check.
    differ = [k for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k)]
    if differ:
        what = ", ".join(f"{_SETTING_NAMES.get(k, k)}: {theirs.get(k)!r} there, {ours.get(k)!r} here" for k in differ)
        raise ValueError(f"{str(partial_path)!r} holds an interrupted pass made with other settings ({what}); "
                         "rerun with its settings to finish it (the same checkpoint at its old path: a symlink "
                         "will do), or delete it to start over")
    store.update(earlier)
    changed = [sid for sid in earlier.sample_ids() if earlier.digest(sid) != digests.get(sid)]
    for sid in changed:  # re-encoded, new masks, or not in this dataset: computed again (or dropped)
        store.discard(sid)
    if changed:
        print(f"{partial_path}: {len(changed)} sample(s) differ from data.path's manifest (e.g. {changed[0]!r}); "
              "their errors are computed again", flush=True)
    return store.sample_ids()


def _atomic_save(store, path: Path) -> None:
    """Write next to `path`, flush it to disk, then rename over it: a kill, a crash or a power loss
    at any moment leaves either the previous file or the new one, whole."""
    tmp = _temporary(path)
    store.save(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    tmp.replace(path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself
    finally:
        os.close(fd)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# config key -> store metadata key: settings that change the stored errors
_STORE_KEYS = {"run.seed": "seed", "objective.timestep_sampling": "sampling", "objective.shift": "shift",
               "model.family": "family", "objective.hand_weight": "hand_weight",
               "objective.skip_frames": "skip_frames", "objective.logit_mean": "logit_mean",
               "objective.logit_std": "logit_std"}
# store metadata key -> what the user sets, for the resume error
_SETTING_NAMES = {**{meta: key for key, meta in _STORE_KEYS.items()}, "n_draws": "--draws",
                  "source": "model.source", "compute_dtype": "model.dtype / deepspeed.bf16",
                  "losers": "loser errors (objective.name=dpo)"}


def load_checked_store(cfg: TrainConfig, records=None):
    """The store `reference.store`, after `check_store` against the manifest `records` of data.path
    (read when not given): what `ipa train --nproc` runs before any rank starts, and every rank
    before its model build (outside launchers)."""
    digests = record_digests(records) if records is not None else _manifest_digests(cfg)
    store = models.ReferenceStore.load(cfg.reference.store)
    check_store(cfg, store, list(digests), digests)
    return store


def check_store(cfg: TrainConfig, store, sample_ids, digests=None) -> None:
    """Refuse, before the first step, a store that cannot serve this run: other draw settings, fewer
    draws than `reference.draws`, samples of the dataset it does not hold, or (given `digests`, the
    manifest's sha256 per sample id) samples whose data changed since (ValueError naming the key)."""
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
    if cfg.objective.name == "dpo" and not store.has_losers:
        raise ValueError(f"objective.name: dpo needs the reference's errors on the loser latents, which "
                         f"{cfg.reference.store!r} does not hold (run `ipa precompute-reference` with objective.name=dpo)")
    missing = sorted(set(map(str, sample_ids)) - set(store.sample_ids()))
    if missing:
        raise ValueError(f"reference.store: {cfg.reference.store!r} has no errors for {len(missing)} sample(s) of "
                         f"data.path, e.g. {missing[:3]} (run `ipa precompute-reference` on this dataset)")
    changed = sorted(sid for sid, sha in (digests or {}).items() if store.digest(sid) not in (None, sha))
    if changed:
        raise ValueError(f"reference.store: {cfg.reference.store!r} holds errors computed on other data for "
                         f"{len(changed)} sample(s) of data.path (their manifest sha256 changed since), e.g. "
                         f"{changed[:3]} (run `ipa precompute-reference` again)")
