"""`python -m ipa.train --config C.yaml` (also under `torchrun -m` and `deepspeed --module`: its launcher spells -m that way)."""

import sys

from .cli import module_main

sys.exit(module_main("train"))
