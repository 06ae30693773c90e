"""The dataset format: a folder of safetensors shards plus `manifest.jsonl`.

    DATASET/
      dataset.json            {"format": "ipa-shards", "version": 1, "family": ..., ...}
      shard-00000.safetensors tensors named "<sample_id>/<key>", one sample's keys per the batch
      shard-00001.safetensors contract of `ipa.models.inputs` without the batch axis
      manifest.jsonl          one line per sample: id, shard, shapes, dtypes, sha256

The manifest is written last, after every shard is complete, so a folder with a manifest is a
whole dataset; each file is written to a temporary name and renamed (atomic). Readers verify a
sample's sha256 when asked, and report a missing, truncated or corrupt shard by its file name.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

FORMAT = "ipa-shards"
VERSION = 1
MANIFEST = "manifest.jsonl"
INFO = "dataset.json"


class ShardError(ValueError):
    """A dataset file is missing, truncated or does not match its manifest (names the file)."""


def sample_checksum(tensors: dict) -> str:
    """sha256 over the sample's keys, dtypes, shapes and bytes, in key order."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().contiguous().cpu()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def atomic_write_text(path, text: str) -> None:
    """`path` holds the old text or the new one, never a mix (a kill mid-write included)."""
    path = Path(path)
    part = path.with_name(path.name + ".part")
    part.write_text(text)
    os.replace(part, path)


class ShardWriter:
    """Write samples into a new dataset folder; `close()` (or the context manager) finishes it.

        with ShardWriter(out, family="wan-vace") as w:
            w.add("clip-0001", {"x0": ..., "text_emb": ..., "control": ..., "hand_mask": ...})
    """

    def __init__(self, out_dir, *, samples_per_shard: int = 64, **info):
        self.out = Path(out_dir)
        if (self.out / MANIFEST).exists():
            raise ValueError(f"out_dir (--out) {str(self.out)!r} already holds a dataset (manifest.jsonl); "
                             "choose a new folder")
        if samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
        self.out.mkdir(parents=True, exist_ok=True)
        self.samples_per_shard = samples_per_shard
        self.info = {"format": FORMAT, "version": VERSION, **info}
        self._pending, self._records, self._ids, self._shards = {}, [], set(), 0
        self._storages = set()  # storages held by the pending shard

    def add(self, sample_id: str, tensors: dict) -> None:
        sample_id = str(sample_id)
        if not sample_id or "/" in sample_id or sample_id in self._ids:
            raise ValueError(f"sample_id must be unique, non-empty and without '/', got {sample_id!r}")
        bad = [k for k, v in tensors.items() if not isinstance(v, torch.Tensor) or "/" in k]
        if bad:
            raise ValueError(f"sample {sample_id!r}: values must be tensors and keys without '/', bad keys {bad}")
        self._ids.add(sample_id)
        tensors = {k: self._own(v.detach().contiguous().cpu()) for k, v in tensors.items()}
        self._records.append({
            "id": sample_id, "shard": self._shard_name(self._shards),
            "shapes": {k: list(v.shape) for k, v in tensors.items()},
            "dtypes": {k: str(v.dtype).replace("torch.", "") for k, v in tensors.items()},
            "sha256": sample_checksum(tensors),
        })
        self._pending.update({f"{sample_id}/{k}": v for k, v in tensors.items()})
        if sum(1 for r in self._records if r["shard"] == self._shard_name(self._shards)) >= self.samples_per_shard:
            self._flush()

    def _own(self, t: torch.Tensor) -> torch.Tensor:
        """`t`, or a copy when its storage is shared (a view, or a tensor already added):
        safetensors refuses to write shared storage under two names."""
        ptr = t.untyped_storage().data_ptr()
        if ptr in self._storages or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone()
            ptr = t.untyped_storage().data_ptr()
        self._storages.add(ptr)
        return t

    @staticmethod
    def _shard_name(i: int) -> str:
        return f"shard-{i:05d}.safetensors"

    def _flush(self) -> None:
        from safetensors.torch import save_file

        if not self._pending:
            return
        path = self.out / self._shard_name(self._shards)
        part = path.with_name(path.name + ".part")
        save_file(self._pending, str(part), metadata={"format": FORMAT})
        os.replace(part, path)
        self._pending, self._shards, self._storages = {}, self._shards + 1, set()

    def close(self) -> Path:
        self._flush()
        atomic_write_text(self.out / INFO, json.dumps({**self.info, "samples": len(self._records)}, indent=1))
        atomic_write_text(self.out / MANIFEST, "".join(json.dumps(r) + "\n" for r in self._records))
        return self.out

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:  # an exception leaves no manifest: the folder is not a dataset
            self.close()


def read_manifest(path) -> tuple[dict, list[dict]]:
    """(dataset.json info, manifest records) of a dataset folder; ShardError naming what is wrong."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise ShardError(f"{str(path)!r} is not an ipa dataset: no {MANIFEST} (was it written completely?)")
    info = json.loads((path / INFO).read_text()) if (path / INFO).is_file() else {}
    records = []
    for n, line in enumerate((path / MANIFEST).read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ShardError(f"{path / MANIFEST}: line {n} is not JSON ({e})") from e
    return info, records
