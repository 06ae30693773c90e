"""`ipa train` and `ipa precompute-reference`, and the entry point launchers run
(`torchrun -m ipa.train`, `deepspeed --module ipa.train`, `python -m ipa.train`)."""

from __future__ import annotations

import argparse
import os
import sys


def _int_at_least(low: int, expected: str = ""):
    """An argparse type: an int >= `low`, else a message saying what was `expected`."""
    expected = expected or f"an int >= {low}"

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = low - 1
        if n < low:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return n
    return parse


def _common(p, kind: str):
    """The options `kind` ("train" or "precompute") takes, under `ipa` and under a launcher."""
    p.add_argument("--config", required=True, help="run YAML (see configs/)")
    p.add_argument("--output-dir", default=None, help="where everything of the run goes (run.output_dir)"
                   if kind == "train" else "run.output_dir: the store goes to OUTPUT_DIR/reference_errors.safetensors "
                   "unless --out or reference.store says otherwise")
    p.add_argument("--nproc", default=0,
                   type=_int_at_least(0, "an int >= 1 (or 0 / omitted: run in this process)"),
                   help="start this many local processes with torchrun (default: run in this process, "
                        "or under the launcher that started it)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    if kind == "train":
        p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR's latest checkpoint (run.resume)")
        p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. objective.beta=100 run.steps=50")
        return
    # a precompute pass resumes by itself, from the store's .partial file
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.path=data/x reference.draws=4")
    p.add_argument("--draws", type=int, default=None,
                   help="draws per sample (default: reference.draws of the config; train with reference.draws=K)")
    p.add_argument("--out", default=None, help="store path (default reference.store or OUTPUT/reference_errors.safetensors)")
    _save_every(p)


def check_nproc_fits_gpus(nproc: int) -> None:
    """Each rank trains on its own GPU (`LOCAL_RANK`): refuse more ranks than devices before any
    process starts, rather than let ranks past the last GPU die on an invalid device ordinal."""
    import torch

    if torch.cuda.is_available() and nproc > torch.cuda.device_count():
        raise ValueError(f"--nproc {nproc}: this machine has {torch.cuda.device_count()} CUDA device(s), one "
                         "per rank (use at most that many, or CUDA_VISIBLE_DEVICES= for CPU ranks on gloo)")


def _relaunch(args, module_args):
    """Re-run this command under torchrun with `--nproc` processes (single node)."""
    from torch.distributed.run import main as torchrun

    check_nproc_fits_gpus(args.nproc)

    torchrun(["--standalone", f"--nproc_per_node={args.nproc}", "-m", *module_args])
    return 0


def _argv_without_nproc(argv):
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        out.append(a)
    return out


def _load(args, precompute=False):
    from .config import load_config

    overrides = list(args.overrides) + (["run.resume=true"] if getattr(args, "resume", False) else [])
    if precompute:  # the run's own config may already say precomputed: its store is what we write
        overrides.append("reference.mode=copy")
    # training's batch layout against the ranks it will have: --nproc, else the launcher's WORLD_SIZE,
    # else this one process (precompute goes sample by sample: any number of ranks works)
    world = None if precompute else args.nproc or int(os.environ.get("WORLD_SIZE", "1"))
    return load_config(args.config, overrides, output_dir=args.output_dir, world_size=world)  # fail fast


def run_train(args, argv=None):
    cfg = _load(args)
    from .checkpoint import latest_tag

    if not cfg.run.resume and latest_tag(cfg.run.output_dir) is not None:  # before any process starts
        raise ValueError(f"run.output_dir {cfg.run.output_dir!r} already holds checkpoints: pass --resume "
                         "to continue that run, or choose a new --output-dir")
    if args.nproc and "RANK" not in os.environ:
        if cfg.reference.mode == "precomputed":
            from .precompute import load_checked_store

            load_checked_store(cfg)  # one clear error here, not one per rank after the model build
        return _relaunch(args, ["ipa.train", *_argv_without_nproc(argv if argv is not None else sys.argv[2:])])
    from .loop import train

    train(cfg)
    return 0


def run_precompute(args, argv=None):
    cfg = _load(args, precompute=True)
    if args.draws is None:  # default: the draws the run's config asks for
        args.draws = cfg.reference.draws
        if args.draws < 1:
            raise ValueError("--draws: give the number of draws per sample (or set reference.draws in the config)")
    from .precompute import check_resumable, precompute

    if args.nproc and "RANK" not in os.environ:
        check_resumable(cfg, args.draws, args.out)  # one clear error here, not one per rank
        return _relaunch(args, ["ipa.train.precompute_main",
                                *_argv_without_nproc(argv if argv is not None else sys.argv[2:])])
    precompute(cfg, args.draws, args.out, save_every=args.save_every)
    return 0


def _save_every(p):
    p.add_argument("--save-every", type=_int_at_least(1), default=50, metavar="N",
                   help="write the samples done so far to OUT.partial every N samples per rank (default 50); "
                        "a rerun with the same settings resumes from it")


def take_overrides(args, extra: list[str]) -> bool:
    """Adds `extra` to `args.overrides` when all of it is key=value: argparse puts only the first
    run of positionals there, so overrides given between options would be refused."""
    if not all("=" in e and not e.startswith("-") for e in extra):
        return False
    args.overrides += extra
    return True


def register(sub):
    p = sub.add_parser("train")
    _common(p, "train")
    p.set_defaults(func=lambda a: run_train(a, sys.argv[2:]), take_extra=take_overrides)
    p = sub.add_parser("precompute-reference")
    _common(p, "precompute")
    p.set_defaults(func=lambda a: run_precompute(a, sys.argv[2:]), take_extra=take_overrides)


def module_main(kind, argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog=f"python -m ipa.train{'.precompute_main' if kind == 'precompute' else ''}")
    _common(parser, kind)
    args, extra = parser.parse_known_args(argv)
    if extra and not take_overrides(args, extra):
        parser.parse_args(argv)  # argparse's own error for what is left
    try:
        return (run_precompute if kind == "precompute" else run_train)(args, argv)
    except (ValueError, FileNotFoundError) as e:  # a user error: one line per rank, as `ipa` prints it
        rank = os.environ.get("RANK")
        print(f"{parser.prog}{f' (rank {rank})' if rank else ''}: error: {e}", file=sys.stderr)
        return 2
