"""`ipa bench NAME`: run one of the benchmarks in the repository's `benchmarks/` folder.

Benchmarks live beside the package (not inside it) as `benchmarks/<name>.py` modules with a
`main(argv) -> int`, and are equally runnable as `python -m benchmarks.<name>`.
"""

import argparse
import importlib
import sys
from pathlib import Path

BENCHMARKS = {
    "ops": "fused HALO/IPA loss forward+backward vs eager and torch.compile",
    "hands": "keypoints -> pixel/latent hand masks for an 81-frame 480x832 clip; MediaPipe frames/s",
    "train": "ipa train steps/s and peak memory: SFT vs IPA per reference mode and ZeRO stage",
    "model": "one IPA step vs one SFT step per reference mode and attention backend (tiny CPU / 14B block on GPU)",
}


def _repo_root():
    root = Path(__file__).resolve().parents[1]
    if not (root / "benchmarks").is_dir():
        raise SystemExit("ipa bench: the benchmarks/ folder ships with the source checkout; run it "
                         "from an editable install (`make install`) of the repository")
    return root


def register(sub):
    p = sub.add_parser("bench")
    p.add_argument("name", choices=sorted(BENCHMARKS), help="; ".join(f"{k}: {v}" for k, v in BENCHMARKS.items()))
    p.add_argument("rest", nargs=argparse.REMAINDER, help="arguments passed on to the benchmark")
    p.set_defaults(func=run)


def run(args):
    root = str(_repo_root())
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module(f"benchmarks.{args.name}").main(args.rest)
