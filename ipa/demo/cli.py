"""`ipa demo [--quick] [--out demo_out]`: the paper's ablation in miniature, on CPU."""

from __future__ import annotations

import time
from pathlib import Path


def register(sub):
    p = sub.add_parser("demo", help="end-to-end miniature of the paper's ablation on CPU (writes demo_out/)")
    p.add_argument("--out", default="demo_out", help="output folder (results.md, ablation.png, hand_crops.png)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the chain runs, not the result (CI)")
    p.add_argument("--base", default=None, help="base model folder (default: the committed ipa/demo/assets/base)")
    p.set_defaults(func=run)


def run(args) -> int:
    from . import experiment, report

    base = Path(args.base) if args.base else experiment.BASE
    if not (base / "config.json").is_file():
        raise FileNotFoundError(f"--base: {str(base)!r} holds no model (config.json); create one with "
                                f"`python -m ipa.demo.pretrain --out {base}`")
    t0 = time.time()
    plan = experiment.QUICK if args.quick else experiment.FULL
    experiment.run(args.out, plan, base)
    files = report.write_report(args.out)
    print(Path(files["table"]).read_text())
    print("wrote " + ", ".join(files.values()) + f" in {time.time() - t0:.0f} s")
    return 0
