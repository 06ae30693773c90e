"""Fused, differentiable IPA / HALO ops for flow-matching video diffusion.

    from ipa.ops import flow_ipa_loss
    loss, metrics = flow_ipa_loss(model_pred, noise - x0, t, hand_mask, ref_pred=ref_pred)

Backends: Triton on CUDA, C++ (`ipa._C`) on CPU, plain PyTorch anywhere (`backend="torch"`);
`ipa.ops.reference` states every op in plain PyTorch. These ops import nothing else of `ipa`, so
other projects can use them alone.
"""

from . import reference
from ._backends import BACKENDS, available_backends
from .halo_error import HaloError, halo_error, halo_errors
from .losses import FlowDPOLoss, FlowIPALoss, FlowSFTLoss, flow_dpo_loss, flow_ipa_loss, flow_sft_loss

__all__ = [
    "BACKENDS", "available_backends", "reference",
    "halo_error", "halo_errors", "HaloError",
    "flow_ipa_loss", "flow_sft_loss", "flow_dpo_loss",
    "FlowIPALoss", "FlowSFTLoss", "FlowDPOLoss",
]
