"""`python -m ipa.train.precompute_main --config C.yaml --draws K` (what `ipa precompute-reference --nproc N` launches)."""

import sys

from .cli import module_main

if __name__ == "__main__":
    sys.exit(module_main("precompute"))
