"""Reading a shard dataset: a map-style `Dataset`, the batch collate, and a resumable sampler."""

from __future__ import annotations

from pathlib import Path

import torch

from .shards import ShardError, read_manifest, sample_checksum


class ShardDataset(torch.utils.data.Dataset):
    """Samples of a dataset folder as dicts of tensors plus ``"sample_id"``.

    `verify=True` checks each sample's sha256 against the manifest when it is read (cheap next to
    a training step); a failure raises `ShardError` naming the shard file and the sample.
    """

    def __init__(self, path, *, verify: bool = True):
        self.path = Path(path)
        self.info, self.records = read_manifest(self.path)
        if not self.records:
            raise ShardError(f"{str(self.path)!r}: the manifest lists no samples")
        self.verify = verify
        self._handles = {}
        missing = sorted({r["shard"] for r in self.records if not (self.path / r["shard"]).is_file()})
        if missing:
            raise ShardError(f"{str(self.path)!r}: shard file(s) listed in the manifest are missing: {missing}")

    def __len__(self):
        return len(self.records)

    def _open(self, shard: str):
        from safetensors import safe_open

        if shard not in self._handles:
            try:
                self._handles[shard] = safe_open(str(self.path / shard), "pt")
            except Exception as e:  # safetensors raises its own error types for bad headers
                raise ShardError(f"shard {self.path / shard} is corrupt or truncated: {e}") from e
        return self._handles[shard]

    def __getitem__(self, i):
        rec = self.records[i]
        f = self._open(rec["shard"])
        try:
            sample = {k: f.get_tensor(f"{rec['id']}/{k}") for k in rec["shapes"]}
        except Exception as e:
            raise ShardError(f"shard {self.path / rec['shard']}: cannot read sample {rec['id']!r}: {e}") from e
        if self.verify:
            self._check_declared(rec, sample)
        if self.verify and sample_checksum(sample) != rec["sha256"]:
            raise ShardError(f"shard {self.path / rec['shard']}: sample {rec['id']!r} does not match its "
                             "manifest checksum (corrupt shard)")
        sample["sample_id"] = rec["id"]
        return sample

    def _check_declared(self, rec, sample):
        """The manifest's shapes and dtypes are what `ipa train` plans with: they must be the data's."""
        for k, t in sample.items():
            shape, dtype = list(t.shape), str(t.dtype).removeprefix("torch.")
            declared = (rec["shapes"][k], rec.get("dtypes", {}).get(k, dtype))
            if (shape, dtype) != tuple(declared):
                raise ShardError(f"{str(self.path / 'manifest.jsonl')!r}: sample {rec['id']!r} declares {k} "
                                 f"{declared[0]} {declared[1]}, its shard holds {shape} {dtype}")

    def __getstate__(self):  # DataLoader workers reopen shards themselves
        return {**self.__dict__, "_handles": {}}


def collate(samples: list[dict]) -> dict:
    """Stack per-sample tensors into the batch contract of `ipa.models.inputs`."""
    batch = {"sample_id": [s["sample_id"] for s in samples]}
    for key in samples[0]:
        if key == "sample_id":
            continue
        shapes = {tuple(s[key].shape) for s in samples}
        if len(shapes) != 1:
            raise ShardError(f"samples of one batch disagree on {key!r} shapes: {sorted(shapes)}")
        batch[key] = torch.stack([s[key] for s in samples])
    return batch


class ResumableSampler(torch.utils.data.Sampler):
    """Deterministic distributed sampler whose position survives a restart.

    Each epoch is a permutation drawn from ``seed + epoch``, cut into equal shares per rank (the
    tail that does not fill a global batch is dropped). `state_dict` / `load_state_dict` carry
    (epoch, index) so a resumed run sees exactly the samples it would have seen.
    """

    def __init__(self, n: int, *, rank: int = 0, world_size: int = 1, batch_size: int = 1, seed: int = 0):
        per_rank = n // world_size // batch_size * batch_size
        if per_rank == 0:
            raise ValueError(f"dataset of {n} samples is smaller than one global batch "
                             f"({world_size} ranks x micro batch {batch_size})")
        self.n, self.rank, self.world, self.per_rank, self.seed = n, rank, world_size, per_rank, seed
        self.epoch, self.index = 0, 0

    def _order(self, epoch):
        g = torch.Generator().manual_seed(self.seed + epoch)
        perm = torch.randperm(self.n, generator=g)[: self.per_rank * self.world]
        return perm[self.rank::self.world].tolist()

    def __iter__(self):
        while True:  # endless: the trainer counts steps, not epochs
            order = self._order(self.epoch)
            while self.index < len(order):
                i = order[self.index]
                self.index += 1
                yield i
            self.epoch, self.index = self.epoch + 1, 0

    def __len__(self):
        return self.per_rank

    def seek(self, consumed: int):
        """Continue after `consumed` samples of this rank (what a resumed trainer has seen)."""
        self.epoch, self.index = divmod(int(consumed), self.per_rank)

    def state_dict(self):
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state):
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
