"""`ipa select curate`: the chosen candidates -> a training dataset (what `ipa train` reads).

Each chosen candidate becomes one sample: its generated latents as ``x0`` and, from the condition
it was generated for, the same ``control``, ``text_emb`` and ``hand_mask`` (the hand mask follows
the driving pose, which the candidate was made to follow). Sample ids are
``<condition>-cand<k>``; the dataset info records where every sample came from.
"""

from __future__ import annotations

from pathlib import Path


def curate(candidates_dir, selection, out, *, samples_per_shard: int = 16, progress: bool = True) -> Path:
    """Write the curated dataset `out`; ValueError when nothing is chosen or a file is missing."""
    from safetensors.torch import load_file
    from tqdm.auto import tqdm

    from ipa.data import ShardDataset, ShardWriter

    from .candidates import changed_samples, chosen, load_candidates, read_selection, run_info

    sel = read_selection(selection)
    keys = chosen(sel)
    if not keys:
        raise ValueError(f"selection {str(selection)!r} chooses no candidate (mark some good on the review page)")
    cands = {c.key: c for c in load_candidates(candidates_dir)}
    missing = [k for k in keys if k not in cands]
    if missing:
        raise ValueError(f"selection {str(selection)!r} chooses {missing[:3]}, not found in {str(candidates_dir)!r}")
    changed = changed_samples({k: sel["candidates"][k] for k in keys}, list(cands.values()))
    if changed:
        raise ValueError(f"selection {str(selection)!r} chose other samples than {str(candidates_dir)!r} holds now "
                         f"({'; '.join(changed[:3])}): rerun `ipa select auto` (and review) on these candidates")
    conditions = ShardDataset(run_info(candidates_dir)["conditions"], verify=False)
    index = {r["id"]: i for i, r in enumerate(conditions.records)}
    info = {k: v for k, v in conditions.info.items() if k not in ("format", "version", "samples")}
    info.update(curated=True, candidates_dir=str(Path(candidates_dir).resolve()),
                selection=str(Path(selection).resolve()), sources=keys)
    with ShardWriter(out, samples_per_shard=samples_per_shard, **info) as writer:
        for key in tqdm(keys, desc="curating", unit="sample", disable=not progress):
            c = cands[key]
            if c.condition not in index:
                raise ValueError(f"candidate {str(c.folder)!r} is for condition {c.condition!r}, which the "
                                 f"conditions dataset {str(conditions.path)!r} does not hold")
            cond = conditions[index[c.condition]]
            try:
                x0 = load_file(str(c.latents))["x0"]
            except Exception as e:  # safetensors' own error types
                raise ValueError(f"cannot read {str(c.latents)!r}: {e}") from e
            if x0.shape != cond["x0"].shape:
                raise ValueError(f"{str(c.latents)!r} holds x0 of shape {list(x0.shape)}, but condition "
                                 f"{c.condition!r} has {list(cond['x0'].shape)}")
            sample = {k: v for k, v in cond.items() if k != "sample_id"}
            sample["x0"] = x0.to(cond["x0"].dtype)
            writer.add(f"{c.condition}-cand{c.index}", sample)
    return Path(out)


def register(sp):
    """`ipa select curate`."""
    q = sp.add_parser("curate", help="chosen candidates (selection.json) -> training dataset")
    q.add_argument("--candidates", required=True, help="folder written by `ipa generate`")
    q.add_argument("--selection", required=True, help="selection.json (ipa select auto / review)")
    q.add_argument("--out", required=True)
    q.add_argument("--samples-per-shard", type=int, default=16)
    q.set_defaults(func=_run)


def _run(args):
    out = curate(args.candidates, args.selection, args.out, samples_per_shard=args.samples_per_shard)
    print(f"curated dataset in {out}")
