"""Deterministic (noise, t) draws per (sample id, draw index), and the precomputed-reference store.

The ``precomputed`` reference needs the training step to see exactly the noise and timestep the
offline pass saw. So neither comes from a global RNG: each (seed, sample_id, draw) pair hashes to
its own ``torch.Generator`` seed (blake2b, not Python's salted ``hash``), and any process on any
machine with the same torch version regenerates bit-identical tensors.
"""

import hashlib
import json
import math
from pathlib import Path

import torch

SAMPLINGS = ("uniform", "logit-normal")


def draw_seed(seed, sample_id, draw):
    """64-bit generator seed of one draw; stable across processes, platforms and Python versions."""
    key = f"ipa-draw\x00{int(seed)}\x00{sample_id}\x00{int(draw)}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & (2**63 - 1)


def shift_timesteps(t, shift):
    """Flow-matching timestep shift ``shift * t / (1 + (shift - 1) * t)`` (shift 1: identity)."""
    return shift * t / (1 + (shift - 1) * t)


def draw_noise_and_t(sample_id, draw, shape, *, seed, sampling="uniform", shift=1.0,
                     logit_mean=0.0, logit_std=1.0):
    """Noise and normalized timestep of draw `draw` of sample `sample_id`.

    Args:
        shape: per-sample latent shape (C, F, H, W).
        seed: run-level seed (the same for precompute and training).
        sampling: "uniform" (t ~ U[0, 1)) or "logit-normal" (t = sigmoid(N(logit_mean, logit_std))).
        shift: timestep shift applied after sampling (Wan uses 3-5 at inference; 1 = none).
    Returns:
        (noise float32 CPU tensor of `shape`, t float32 0-d CPU tensor in [0, 1]).
    The timestep is drawn before the noise from the same generator, so t never depends on shape.
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if not (isinstance(shift, (int, float)) and shift > 0 and math.isfinite(shift)):
        raise ValueError(f"shift must be a finite number > 0, got {shift!r}")
    if not (isinstance(draw, int) and draw >= 0):
        raise ValueError(f"draw must be an int >= 0, got {draw!r}")
    g = torch.Generator("cpu").manual_seed(draw_seed(seed, sample_id, draw))
    if sampling == "uniform":
        t = torch.rand((), generator=g, dtype=torch.float32)
    else:
        t = torch.sigmoid(torch.randn((), generator=g, dtype=torch.float32) * logit_std + logit_mean)
    t = shift_timesteps(t, shift) if shift != 1 else t
    noise = torch.randn(tuple(shape), generator=g, dtype=torch.float32)
    return noise, t


def flow_draw(batch, *, seed, sampling="uniform", shift=1.0, draws=None, **sampling_kw):
    """The flow-matching inputs of a batch from its deterministic draws.

    Uses ``batch["sample_id"]`` and ``batch["draw"]`` (or `draws`, a list/tensor of ints) and
    ``batch["x0"]``. Returns a dict: ``noise``, ``t`` [B] (float32), ``noisy`` = (1 - t) x0 + t noise
    and ``target`` = noise - x0, all on x0's device, noisy/target/noise in x0's dtype; with
    ``batch["x0_loser"]`` (DPO pairs) also ``noisy_loser`` and ``target_loser`` under the same
    noise and t.
    """
    x0 = batch["x0"]
    ids = list(batch["sample_id"])
    draws = batch.get("draw") if draws is None else draws
    if draws is None:
        raise ValueError("batch has no 'draw' (and no draws= given): which draw of each sample to use")
    draws = [int(d) for d in (draws.tolist() if torch.is_tensor(draws) else draws)]
    if len(ids) != x0.shape[0] or len(draws) != x0.shape[0]:
        raise ValueError(f"sample_id ({len(ids)}) and draw ({len(draws)}) must have one entry per sample "
                         f"(x0 has {x0.shape[0]})")
    pairs = [draw_noise_and_t(i, d, x0.shape[1:], seed=seed, sampling=sampling, shift=shift, **sampling_kw)
             for i, d in zip(ids, draws)]
    noise = torch.stack([p[0] for p in pairs]).to(x0.device)
    t = torch.stack([p[1] for p in pairs]).to(x0.device)
    out = {"noise": noise.to(x0.dtype), "t": t, **_flow_inputs(x0, noise, t)}
    if "x0_loser" in batch:  # DPO's loser: the same noise and t as its winner
        loser = _flow_inputs(batch["x0_loser"], noise, t)
        out.update(noisy_loser=loser["noisy"], target_loser=loser["target"])
    return out


def _flow_inputs(x0, noise, t):
    """noisy = (1 - t) x0 + t noise, target = noise - x0; in fp32 from the fp32 noise, then x0's dtype."""
    x0f = x0.float()
    tb = t.view(-1, 1, 1, 1, 1)
    return {"noisy": ((1 - tb) * x0f + tb * noise).to(x0.dtype), "target": (noise - x0f).to(x0.dtype)}


class ReferenceStore:
    """Per-sample reference errors (and their timesteps) for draws 0..n_draws-1.

    On disk: one safetensors file holding a few [N, ...] tensors, row i for sample ``ids[i]``:
    ``err`` and ``t`` [N, n_draws] float32 (NaN where a draw was not computed), for DPO also
    ``err_loser`` (the error on the sample's loser latent under the same noise and t), optionally
    ``sha256`` [N, 32] uint8 (the dataset manifest's checksum of the sample the errors were
    computed on; zeros: not recorded). The settings that produced them (seed, sampling, shift, HALO
    weights, ...) are JSON metadata under ``ipa_reference_store``, the ids under
    ``ipa_reference_ids``. A few large tensors rather than one per sample: a 100k-sample store
    saves in well under a second (a pass rewrites it every few minutes) and stays far below
    safetensors' 100 MB header limit. Stores of the first format (``err/<id>`` ... per sample) load.
    """

    META_KEY = "ipa_reference_store"
    IDS_KEY = "ipa_reference_ids"
    _KINDS = ("err", "t", "err_loser")

    def __init__(self, n_draws, **meta):
        if not (isinstance(n_draws, int) and n_draws >= 1):
            raise ValueError(f"n_draws must be a positive int, got {n_draws!r}")
        self.n_draws = n_draws
        self.meta = dict(meta)
        self._data = {kind: {} for kind in self._KINDS}  # kind -> sample id -> [n_draws]
        self._digests = {}  # sample id -> sha256 hex of the sample the errors were computed on

    def __len__(self):
        return len(self._data["err"])

    def sample_ids(self):
        return sorted(self._data["err"])

    @property
    def has_losers(self) -> bool:
        """Whether it holds loser errors (a store for objective.name=dpo; its settings say so
        before any sample is added)."""
        return bool(self.meta.get("losers")) or bool(self._data["err_loser"])

    def set_digest(self, sample_id, sha256: str) -> None:
        """Record which data `sample_id`'s errors belong to (the manifest's sha256, hex)."""
        bytes.fromhex(sha256)  # a ValueError now rather than at save
        self._digests[str(sample_id)] = sha256

    def digest(self, sample_id):
        """The sha256 recorded for `sample_id`, or None (stores written before digests, or none set)."""
        return self._digests.get(str(sample_id))

    def discard(self, sample_id) -> None:
        """Forget every value of `sample_id` (errors computed on data that has changed since)."""
        for rows in (*self._data.values(), self._digests):
            rows.pop(str(sample_id), None)

    def add(self, sample_id, draw, t, err, err_loser=None):
        """Record the error of draw `draw` of `sample_id` (t: its timestep; `err_loser`: the error
        on its loser latent, for DPO)."""
        if not (0 <= int(draw) < self.n_draws):
            raise ValueError(f"draw must be in [0, {self.n_draws}), got {draw}")
        values = {"err": err, "t": t} if err_loser is None else {"err": err, "t": t, "err_loser": err_loser}
        for kind, value in values.items():
            row = self._data[kind].setdefault(str(sample_id), torch.full((self.n_draws,), float("nan")))
            row[int(draw)] = float(value)

    def update(self, other: "ReferenceStore") -> None:
        """Take every sample `other` holds (an earlier pass of the same settings), replacing ours."""
        if other.n_draws != self.n_draws:
            raise ValueError(f"cannot merge a store of {other.n_draws} draws into one of {self.n_draws}")
        for kind, rows in other._data.items():
            self._data[kind].update({sid: row.clone() for sid, row in rows.items()})
        self._digests.update(other._digests)

    def lookup(self, sample_ids, draws, *, loser=False):
        """(errors [B], timesteps [B]) float32 CPU tensors, the errors on the loser latents when
        `loser`; ValueError naming what is missing."""
        draws = draws.tolist() if torch.is_tensor(draws) else list(draws)
        errors = self._data["err_loser" if loser else "err"]
        err, t = [], []
        for sid, d in zip(sample_ids, draws):
            sid, d = str(sid), int(d)
            if sid not in errors or not (0 <= d < self.n_draws) or math.isnan(errors[sid][d]):
                what = "loser error" if loser else "error"
                hint = " (precompute with objective.name=dpo for loser errors)" if loser and not self.has_losers else ""
                raise ValueError(f"reference store has no {what} for sample {sid!r} draw {d} "
                                 f"({len(self)} samples x {self.n_draws} draws stored){hint}")
            err.append(errors[sid][d])
            t.append(self._data["t"][sid][d])
        return torch.stack(err), torch.stack(t)

    def save(self, path):
        from safetensors.torch import save_file

        ids = self.sample_ids()
        nan_row = torch.full((self.n_draws,), float("nan"))
        tensors = {kind: torch.stack([rows.get(sid, nan_row) for sid in ids]) if ids
                   else torch.zeros(0, self.n_draws)
                   for kind, rows in self._data.items() if rows or kind != "err_loser"}
        if self._digests:
            packed = bytearray(b"".join(bytes.fromhex(self._digests.get(sid, "00" * 32)) for sid in ids))
            tensors["sha256"] = torch.frombuffer(packed, dtype=torch.uint8).reshape(len(ids), 32)
        meta = {"n_draws": self.n_draws, **self.meta}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata={self.META_KEY: json.dumps(meta, sort_keys=True),
                                                self.IDS_KEY: json.dumps(ids)})
        return Path(path)

    @classmethod
    def load(cls, path):
        from safetensors import safe_open

        if not Path(path).is_file():
            raise ValueError(f"reference store {str(path)!r} does not exist")
        with safe_open(str(path), "pt") as f:
            header = f.metadata() or {}
            meta = json.loads(header.get(cls.META_KEY, "null") or "null")
            if meta is None:
                raise ValueError(f"{str(path)!r} is not an ipa reference store (no {cls.META_KEY} metadata)")
            store = cls(meta.pop("n_draws"), **meta)
            if cls.IDS_KEY in header:
                store._read_tables(f, json.loads(header[cls.IDS_KEY]), path)
            else:
                store._read_per_sample(f, path)
        return store

    def _read_tables(self, f, ids, path):
        """The [N, ...] tensors of the current format; row i is sample ids[i]."""
        for kind in f.keys():
            table = f.get_tensor(kind)
            if kind == "sha256":  # zero rows: no digest recorded
                self._digests.update({sid: row.tobytes().hex() for sid, row in zip(ids, table.numpy()) if row.any()})
            elif kind in self._data:  # all-NaN loser rows: no loser error stored
                keep = (~table.isnan().all(1)).tolist() if kind == "err_loser" else [True] * len(ids)
                self._data[kind].update({sid: row for sid, row, k in zip(ids, table.unbind(0), keep) if k})
            else:
                raise ValueError(f"{str(path)!r}: unknown tensor {kind!r} in a reference store")

    def _read_per_sample(self, f, path):
        """The first format: tensors ``<kind>/<sample_id>``."""
        for key in f.keys():
            kind, sid = key.split("/", 1)
            if kind == "sha256":
                self._digests[sid] = bytes(f.get_tensor(key).tolist()).hex()
            elif kind in self._data:
                self._data[kind][sid] = f.get_tensor(key)
            else:
                raise ValueError(f"{str(path)!r}: unknown tensor {key!r} in a reference store")
