"""Checkpoints that survive a kill at any moment.

DeepSpeed writes each checkpoint (weights, optimizer, scheduler) under `checkpoints/<tag>/`; our
own `checkpoints/latest` pointer is written only after every rank has finished (a barrier) and
atomically (temporary file + rename), so a run killed mid-save resumes from the previous
checkpoint. The client state holds the step. Beside DeepSpeed's files each rank writes
`rank<N>_state.pt`: its RNG states (python, numpy, torch, CUDA) and its data position (samples
consumed, and the ranks x micro batch x accumulation layout that position assumes). Noise,
timesteps and data order are functions of (seed, sample, step) anyway; the RNG states keep
anything else random (dropout, a user's augmentation) on the same stream after a resume.
"""

from __future__ import annotations

import os
import random
import signal
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

LATEST = "latest"


def checkpoint_dir(output_dir) -> Path:
    return Path(output_dir) / "checkpoints"


def latest_tag(output_dir):
    path = checkpoint_dir(output_dir) / LATEST
    return path.read_text().strip() if path.is_file() else None


def _rank_spans(ranks) -> str:
    """'0-3, 6' for the ranks [0, 1, 2, 3, 6]: short for thousands of ranks."""
    runs: list[list[int]] = []
    for r in ranks:
        if runs and runs[-1][1] == r - 1:
            runs[-1][1] = r
        else:
            runs.append([r, r])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _ranks_by_value(values) -> str:
    """'step00000004 on ranks 0-3, 6; none on ranks 4-5' from one value per rank."""
    by_value: dict = {}
    for rank, v in enumerate(values):
        by_value.setdefault(v, []).append(rank)
    return "; ".join(f"{'none' if v is None else v} on ranks {_rank_spans(r)}" for v, r in by_value.items())


def agreed_latest_tag(output_dir):
    """`latest_tag`, checked to be the same on every rank; ranks that disagree are refused together.

    Checkpoints assume one directory all ranks share (rank 0 moves the `latest` pointer for all).
    On node-local disks some ranks would resume while others started over, then hang in their
    next collective; every rank raises the same error instead.
    """
    tag = latest_tag(output_dir)
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return tag
    tags = [None] * dist.get_world_size()
    dist.all_gather_object(tags, tag)
    if len(set(tags)) > 1:
        raise ValueError(f"run.output_dir {str(output_dir)!r}: the ranks see different checkpoints "
                         f"({_ranks_by_value(tags)}); it must be one directory every node sees (a shared "
                         "filesystem)")
    return tag


def _rank_state_path(output_dir, tag: str, rank: int) -> Path:
    return checkpoint_dir(output_dir) / tag / f"rank{rank}_state.pt"


def rank_state(data: dict) -> dict:
    """This rank's RNG states and data position (`data`: consumed, world_size, micro_batch, grad_accum)."""
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {"rng": rng, "data": dict(data)}


def has_frozen_parameters(engine) -> bool:
    return any(not p.requires_grad for p in engine.module.parameters())


def save(engine, output_dir, step: int, data: dict | None = None) -> str:
    """Checkpoint after `step` optimizer steps; `data` is this rank's data position (see rank_state)."""
    tag = f"step{step:08d}"
    root = checkpoint_dir(output_dir)
    # Frozen weights (a LoRA run's whole base model: 28 GB at 14B in bf16) are rebuilt from
    # model.source on resume; only what trains goes into each checkpoint.
    engine.save_checkpoint(str(root), tag=tag, client_state={"step": step}, save_latest=False,
                           exclude_frozen_parameters=has_frozen_parameters(engine))
    if os.environ.get("IPA_TRAIN_KILL_IN_SAVE") == str(step) and dist.get_rank() == 0:  # tests: crash mid-save
        os.killpg(os.getpgid(0), signal.SIGKILL)
    torch.save(rank_state(data or {}), _rank_state_path(output_dir, tag, dist.get_rank()))
    dist.barrier()  # every rank's files are complete before the pointer moves
    if dist.get_rank() == 0:
        part = root / (LATEST + ".part")
        part.write_text(tag + "\n")
        os.replace(part, root / LATEST)
    dist.barrier()
    return tag


def check_layout(output_dir, data: dict) -> None:
    """Refuse a resume whose ranks x micro batch x accumulation differ from the checkpoint's (the data
    position and DeepSpeed's partitioned optimizer state would not carry over exactly), or whose
    checkpoint lacks a rank's state. Every rank sees the same files, so all refuse together."""
    tag = latest_tag(output_dir)
    if tag is None:
        return
    states = [_rank_state_path(output_dir, tag, r) for r in range(data["world_size"])]
    if states[0].is_file():
        saved = torch.load(states[0], weights_only=False)["data"]
        for key, name in (("world_size", "number of ranks"), ("micro_batch", "data.micro_batch"),
                          ("grad_accum", "data.grad_accum")):
            if key in saved and saved[key] != data[key]:
                raise ValueError(f"{name}: the checkpoint {tag} was written with {saved[key]}, this run has "
                                 f"{data[key]}; resume with the same layout (or start a new --output-dir)")
    missing = [r for r, path in enumerate(states) if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"checkpoint {tag} in {checkpoint_dir(output_dir)} lacks the RNG states and data "
                                f"position (rank<N>_state.pt) of ranks {_rank_spans(missing)}")


def load(engine, output_dir) -> int:
    """Restore the latest checkpoint into `engine` and this rank's RNG states; returns the step to
    continue from (0: none)."""
    tag = latest_tag(output_dir)
    if tag is None:  # a relaunch script may always pass --resume: start, but say so (a misspelled dir?)
        if dist.get_rank() == 0:
            print(f"resume: no checkpoint in {str(output_dir)!r} yet: starting at step 0", file=sys.stderr, flush=True)
        return 0
    # Without its frozen weights (see `save`) the module state is partial, so not strict.
    path, client = engine.load_checkpoint(str(checkpoint_dir(output_dir)), tag=tag,
                                          load_module_strict=not has_frozen_parameters(engine))
    if path is None:
        raise RuntimeError(f"checkpoint {tag} in {checkpoint_dir(output_dir)} could not be loaded")
    state_path = _rank_state_path(output_dir, tag, dist.get_rank())
    if not state_path.is_file():  # every rank writes its own before `latest` names the checkpoint
        raise FileNotFoundError(f"checkpoint {tag} lacks {state_path.name} (this rank's RNG states and data "
                                f"position): {state_path}")
    rng = torch.load(state_path, weights_only=False)["rng"]
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return int(client["step"])
