"""`ipa demo [--quick] [--out demo_out]`: the paper's ablation in miniature, on CPU."""

from __future__ import annotations

import time
from pathlib import Path


def register(sub):
    p = sub.add_parser("demo")
    p.add_argument("--out", default="demo_out", help="output folder (results.md, ablation.png, hand_crops.png)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the chain runs, not the result (CI)")
    p.add_argument("--base", default=None, help="base model folder (default: the committed ipa/demo/assets/base)")
    p.add_argument("--steps", type=int, default=None, help="training steps of every run (default: the plan's)")
    p.add_argument("--seeds", default=None, help="training seeds, comma-separated (default: the plan's)")
    p.add_argument("--recipes", default=None,
                   help=f"comma-separated subset of {','.join(RECIPE_KEYS)}; drops the beta sweep unless --betas")
    p.add_argument("--betas", default=None, help="extra IPA + HALO betas, comma-separated ('' for none)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="any other plan field (ipa.demo.experiment.Plan), e.g. --set candidates=16 "
                        "--set gen_conditions=50 (repeatable; values as YAML)")
    p.add_argument("--data-from", default=None,
                   help="an earlier demo folder: train on its curated samples (copied) instead of generating")
    p.set_defaults(func=run)


RECIPE_KEYS = ("sft", "sft_halo", "ipa", "ipa_halo")


def _numbers(text, cast, flag):
    try:
        return tuple(cast(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"{flag}: expected comma-separated numbers, got {text!r}") from None


def _copy_data(src: Path, out: Path, settings: dict) -> None:
    """Copy an earlier run's curated samples into OUT, refusing ones made with other `settings`."""
    import shutil

    from .experiment import has_curated, settings_mismatch

    if not has_curated(src):
        raise ValueError(f"--data-from: {str(src)!r} holds no curated demo data (selection.json, curated/)")
    why = settings_mismatch(src, settings)
    if why is not None:
        raise ValueError(f"--data-from: {str(src)!r} does not fit this run: {why}; drop --data-from to "
                         "generate anew, or match the plan to it")
    if src.resolve() == out.resolve():
        return
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src / "selection.json", out / "selection.json")
    shutil.copytree(src / "curated", out / "curated", dirs_exist_ok=True)


def plan_from_args(args):
    """The plan (`QUICK` or `FULL`) with the command line's overrides; on the same OUT folder the
    self-generated data are reused, so a variant trains on exactly the same curated samples."""
    import contextlib
    import dataclasses

    import yaml

    from . import experiment

    plan, changes = experiment.QUICK if args.quick else experiment.FULL, {}
    if args.steps is not None:
        if args.steps < 1:
            raise ValueError(f"--steps: must be >= 1, got {args.steps}")
        changes["steps"] = args.steps
    if args.seeds is not None:
        changes["seeds"] = changes["beta_seeds"] = _numbers(args.seeds, int, "--seeds")
    if args.recipes is not None:
        recipes = tuple(r.strip() for r in args.recipes.split(",") if r.strip())
        bad = [r for r in recipes if r not in RECIPE_KEYS]
        if bad or not recipes:
            raise ValueError(f"--recipes: expected a comma-separated subset of {list(RECIPE_KEYS)}, got {args.recipes!r}")
        changes.update(recipes=recipes, betas=())
    if args.betas is not None:
        changes["betas"] = _numbers(args.betas, float, "--betas")
    names = {f.name for f in dataclasses.fields(plan)}
    for item in args.set:
        key, sep, text = item.partition("=")
        if not sep or key not in names:
            raise ValueError(f"--set: expected FIELD=VALUE with FIELD one of {sorted(names)}, got {item!r}")
        default, value = getattr(plan, key), yaml.safe_load(text)
        if isinstance(default, float) and isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(default, tuple):
            value = tuple(value) if isinstance(value, list) else (value,)
        if type(value) is not type(default) and not (isinstance(default, float) and isinstance(value, int)):
            raise ValueError(f"--set {key}: expected {type(default).__name__} like {default!r}, got {value!r}")
        changes[key] = float(value) if isinstance(default, float) else value
    return dataclasses.replace(plan, **changes)


def run(args) -> int:
    from . import experiment, report

    base = Path(args.base) if args.base else experiment.BASE
    if not (base / "config.json").is_file():
        raise FileNotFoundError(f"--base: {str(base)!r} holds no model (config.json); create one with "
                                f"`python -m ipa.demo.pretrain --out {base}`")
    t0 = time.time()
    plan = plan_from_args(args)
    if args.data_from:
        _copy_data(Path(args.data_from), Path(args.out), experiment.generation_settings(plan, base))
    experiment.run(args.out, plan, base)
    files = report.write_report(args.out)
    print(Path(files["table"]).read_text())
    print("wrote " + ", ".join(files.values()) + f" in {time.time() - t0:.0f} s")
    return 0
