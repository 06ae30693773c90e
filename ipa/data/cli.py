"""`ipa data ...`: dataset commands. Subcommands are listed in SUBCOMMANDS (name -> register
function) so that other modules (prepare) add theirs with one line."""

from __future__ import annotations

from . import prepare


def _synth(args):
    from .synth import synthesize

    out = synthesize(args.out, family=args.family, size=args.size, n=args.n, seed=args.seed,
                     with_loser=args.with_loser)
    print(f"wrote {args.n} synthetic {args.family} samples ({args.size}"
          f"{', with x0_loser' if args.with_loser else ''}) to {out}")


def _check(args):
    from tqdm.auto import tqdm

    from .dataset import ShardDataset

    ds = ShardDataset(args.path, verify=True)
    for i in tqdm(range(len(ds)), desc="verifying", unit="sample"):
        ds[i]
    print(f"{args.path}: {len(ds)} samples, all checksums, shapes and dtypes match the manifest")


def register_synth(ds):
    from ipa.models import FAMILIES

    from .synth import SIZES

    q = ds.add_parser("synth", help="write a synthetic dataset (tests, smoke runs)")
    q.add_argument("--family", choices=FAMILIES, default="wan-vace")
    q.add_argument("--size", choices=sorted(SIZES), default="tiny")
    q.add_argument("--n", type=int, default=16)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", required=True)
    q.add_argument("--with-loser", action="store_true",
                   help="add an x0_loser latent per sample (a pair set for objective.name=dpo)")
    q.set_defaults(func=_synth)


def register_check(ds):
    q = ds.add_parser("check", help="verify every sample of a dataset against its manifest")
    q.add_argument("path")
    q.set_defaults(func=_check)


SUBCOMMANDS = {"synth": register_synth, "check": register_check, "prepare": prepare.register}


def register(sub):
    p = sub.add_parser("data")
    ds = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    for add in SUBCOMMANDS.values():
        add(ds)
