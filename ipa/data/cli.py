"""`ipa data ...`: dataset commands. Subcommands are listed in SUBCOMMANDS (name -> register
function) so that other modules (prepare, curate) add theirs with one line."""

from __future__ import annotations

from ipa.cli import add_group

from . import curate, prepare


def _synth(args):
    from .synth import synthesize

    out = synthesize(args.out, family=args.family, size=args.size, n=args.n, seed=args.seed)
    print(f"wrote {args.n} synthetic {args.family} samples ({args.size}) to {out}")


def _check(args):
    from tqdm.auto import tqdm

    from .dataset import ShardDataset

    ds = ShardDataset(args.path, verify=True)
    for i in tqdm(range(len(ds)), desc="verifying", unit="sample"):
        ds[i]
    print(f"{args.path}: {len(ds)} samples, all checksums match")


def register_synth(ds):
    from ipa.models import FAMILIES

    from .synth import SIZES

    q = ds.add_parser("synth", help="write a synthetic dataset (tests, smoke runs)")
    q.add_argument("--family", choices=FAMILIES, default="wan-vace")
    q.add_argument("--size", choices=sorted(SIZES), default="tiny")
    q.add_argument("--n", type=int, default=16)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", required=True)
    q.set_defaults(func=_synth)


def register_check(ds):
    q = ds.add_parser("check", help="verify every sample of a dataset against its manifest")
    q.add_argument("path")
    q.set_defaults(func=_check)


SUBCOMMANDS = {"synth": register_synth, "check": register_check, "prepare": prepare.register,
               "curate": curate.register}


def register(sub):
    p = add_group(sub, "data")
    ds = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    for add in SUBCOMMANDS.values():
        add(ds)
