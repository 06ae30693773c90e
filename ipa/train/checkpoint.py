"""Checkpoints that survive a kill at any moment.

DeepSpeed writes each checkpoint (weights, optimizer, scheduler) under `checkpoints/<tag>/`; our
own `checkpoints/latest` pointer is written only after every rank has finished (a barrier) and
atomically (temporary file + rename), so a run killed mid-save resumes from the previous
checkpoint. The client state holds the step; noise, timesteps and data order are functions of
(seed, step), so nothing else is needed for a bit-identical continuation.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch.distributed as dist

LATEST = "latest"


def checkpoint_dir(output_dir) -> Path:
    return Path(output_dir) / "checkpoints"


def latest_tag(output_dir):
    path = checkpoint_dir(output_dir) / LATEST
    return path.read_text().strip() if path.is_file() else None


def save(engine, output_dir, step: int) -> str:
    tag = f"step{step:08d}"
    root = checkpoint_dir(output_dir)
    engine.save_checkpoint(str(root), tag=tag, client_state={"step": step}, save_latest=False)
    dist.barrier()
    if dist.get_rank() == 0:
        part = root / (LATEST + ".part")
        part.write_text(tag + "\n")
        os.replace(part, root / LATEST)
    dist.barrier()
    return tag


def load(engine, output_dir) -> int:
    """Restore the latest checkpoint into `engine`; returns the step to continue from (0: none)."""
    tag = latest_tag(output_dir)
    if tag is None:
        return 0
    path, client = engine.load_checkpoint(str(checkpoint_dir(output_dir)), tag=tag)
    if path is None:
        raise RuntimeError(f"checkpoint {tag} in {checkpoint_dir(output_dir)} could not be loaded")
    return int(client["step"])
