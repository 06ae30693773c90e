"""IPA post-training on DeepSpeed ZeRO: config, engines, loop, checkpoints, logging.

    ipa train --config configs/tiny-cpu.yaml --nproc 2 --output-dir runs/tiny
    torchrun --nproc_per_node 8 -m ipa.train --config configs/wan-vace-14b-lora-zero2.yaml
    deepspeed --num_gpus 8 --module ipa.train --config configs/wan-vace-14b-lora-zero3.yaml
"""

from .config import ConfigError, TrainConfig, load_config

__all__ = ["ConfigError", "TrainConfig", "load_config", "train"]


def train(cfg):
    from .loop import train as _train

    return _train(cfg)
