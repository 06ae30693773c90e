"""Reading a folder written by `ipa generate`, and the `selection.json` file select and curate share.

selection.json:

    {"version": 1, "candidates_dir": ..., "auto": {method, weights, top, threshold},
     "candidates": {"<condition>/cand-<k>": {"condition", "candidate", "seed", "sample", "scores": {...},
                                             "score", "rank", "auto": bool, "human": "good" | "bad" | null}}}

`sample` (`sample_identity`) names what the candidate's video is: its seed and sampling settings. A
rescoring carries a person's marks over only to the very same samples.

A candidate is chosen when a person marked it good, or when nobody marked it and the auto pass kept
it (`chosen`). Writes are atomic (temporary file + rename), so a crash never leaves half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ipa.generate import CANDIDATE_FILES, SAMPLE_SETTINGS

LABELS = ("good", "bad", None)


@dataclass
class Candidate:
    condition: str
    index: int
    folder: Path
    meta: dict

    @property
    def key(self) -> str:
        return f"{self.condition}/cand-{self.index}"

    @property
    def video(self) -> Path:
        return self.folder / "video.mp4"

    @property
    def latents(self) -> Path:
        return self.folder / "latents.safetensors"


def run_info(candidates_dir) -> dict:
    path = Path(candidates_dir) / "run.json"
    if not path.is_file():
        raise ValueError(f"--candidates {str(candidates_dir)!r} has no run.json (not written by `ipa generate`?)")
    info = _read_json(path)
    if not isinstance(info, dict) or "conditions" not in info:
        raise ValueError(f"{str(path)!r} names no 'conditions' dataset (not written by `ipa generate`?)")
    return info


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(path)!r} is not valid JSON ({e})") from None


def load_candidates(candidates_dir) -> list[Candidate]:
    """Every candidate under `candidates_dir`, checked complete; ValueError naming a missing file."""
    root = Path(candidates_dir)
    run_info(root)
    found = []
    for folder in sorted(root.glob("*/cand-*")):
        if not folder.is_dir():
            continue
        for name in CANDIDATE_FILES:
            if not (folder / name).is_file():
                raise ValueError(f"candidate folder {str(folder)!r} is missing {name} "
                                 f"(expected {', '.join(CANDIDATE_FILES)}; rerun `ipa generate` to finish it)")
        index = folder.name.split("-", 1)[1]
        if not index.isdigit():
            raise ValueError(f"candidate folder {str(folder)!r}: expected cand-<number>")
        found.append(Candidate(folder.parent.name, int(index), folder, _read_json(folder / "meta.json")))
    if not found:
        raise ValueError(f"--candidates {str(root)!r} holds no candidate folders (<condition>/cand-<k>/)")
    return sorted(found, key=lambda c: (c.condition, c.index))


def read_selection(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"selection {str(path)!r} does not exist (run `ipa select auto` first)")
    try:
        sel = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"selection {str(path)!r} is not valid JSON: {e}") from e
    if not isinstance(sel, dict) or not isinstance(sel.get("candidates"), dict):
        raise ValueError(f"selection {str(path)!r} has no 'candidates' mapping")
    for key, entry in sel["candidates"].items():
        if not isinstance(entry, dict):
            raise ValueError(f"selection {str(path)!r}: entry {key!r} must be a mapping like "
                             f'{{"auto": true, "human": "good"}}, got {entry!r}')
    return sel


def sample_identity(meta: dict) -> str:
    """What makes a candidate's video what it is (its meta.json): condition, index, seed and the
    sampling settings. Equal identities: the same video (sampling is deterministic)."""
    fields = {k: meta.get(k) for k in ("condition", "candidate", "seed", *SAMPLE_SETTINGS)}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def changed_samples(entries: dict, candidates: list[Candidate]) -> list[str]:
    """Selection `entries` that are not on these very candidates, said for an error: a key now
    missing, or a key whose sample differs (regenerated, another folder). Entries written before
    `sample` was recorded are compared by seed."""
    now = {c.key: c for c in candidates}
    out = []
    for key, entry in entries.items():
        c = now.get(key)
        if c is None:
            out.append(f"{key} ({entry.get('human')}): not among the candidates")
            continue
        identity, seed = sample_identity(c.meta), c.meta.get("seed")
        if entry.get("sample", identity) != identity or entry.get("seed", seed) != seed:
            out.append(f"{key} ({entry.get('human')}): another sample now (seed {entry.get('seed')} then, {seed} now)")
    return out


def write_selection(path, selection: dict) -> None:
    """Atomic write: a reader (or a crash) sees the old file or the new one, never a mix."""
    path = Path(path)
    part = path.with_name(f".{path.name}.{os.getpid()}.part")
    part.write_text(json.dumps(selection, indent=1))
    os.replace(part, path)


def chosen(selection: dict) -> list[str]:
    """Keys of the candidates to train on: marked good, or kept by the auto pass and not marked."""
    out = []
    for key, c in selection["candidates"].items():
        human = c.get("human")
        if human == "good" or (human is None and c.get("auto")):
            out.append(key)
    return sorted(out)
