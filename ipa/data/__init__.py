"""Datasets of training samples: the shard format, a reader, a resumable sampler, synthetic data.

A sample holds the batch contract of `ipa.models.inputs` without the batch axis (x0, text_emb,
the family's condition tensors, hand_mask); `collate` stacks samples into a batch.
"""

from .dataset import ResumableSampler, ShardDataset, collate
from .shards import ShardError, ShardWriter, read_manifest, sample_checksum
from .synth import SIZES, synthesize

__all__ = ["ShardDataset", "ShardWriter", "ShardError", "ResumableSampler", "collate", "read_manifest",
           "sample_checksum", "synthesize", "SIZES"]
