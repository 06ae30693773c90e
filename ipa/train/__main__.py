"""`python -m ipa.train --config C.yaml` (also under `torchrun -m` and `deepspeed -m`)."""

import sys

from .cli import module_main

sys.exit(module_main("train"))
