"""Models: diffusers Wan / Wan-VACE / Wan-Animate transformers as IPA policy and reference.

    from ipa.models import build_transformer, model_inputs, add_lora, Reference
    policy = add_lora(build_transformer("wan-vace", "/ckpt/Wan2.1-VACE-14B-diffusers", dtype=torch.bfloat16))
    ref = Reference.create("adapter", policy=policy)
    pred = policy(**model_inputs("wan-vace", batch, x_t, t, config=policy.config))[0]
    err_ref = ref.error(batch, x_t, t, target, batch["hand_mask"])

The batch keys are documented in `ipa.models.inputs`.
"""

from .attention import BACKENDS as ATTENTION_BACKENDS
from .attention import available_backends, resolve_backend, set_attention_backend
from .build import TINY_CONFIGS, build_transformer, model_class, tiny_config
from .draws import ReferenceStore, draw_noise_and_t, draw_seed, flow_draw, shift_timesteps
from .inputs import FAMILIES, model_inputs, required_keys
from .lora import (adapters_disabled, add_lora, export_lora, full_finetune, has_lora, load_lora,
                   lora_layers, lora_state_dict, trainable_parameters)
from .reference import (MODES as REFERENCE_MODES, AdapterReference, CopyReference, PrecomputedReference,
                        Reference, forward, precompute_reference_errors, prediction_error)
from .synthetic import synthetic_batch

__all__ = [
    "FAMILIES", "ATTENTION_BACKENDS", "REFERENCE_MODES", "TINY_CONFIGS",
    "build_transformer", "model_class", "tiny_config",
    "model_inputs", "required_keys", "synthetic_batch", "forward",
    "available_backends", "resolve_backend", "set_attention_backend",
    "add_lora", "full_finetune", "has_lora", "trainable_parameters", "adapters_disabled",
    "lora_layers",
    "lora_state_dict", "export_lora", "load_lora",
    "Reference", "CopyReference", "AdapterReference", "PrecomputedReference", "precompute_reference_errors",
    "prediction_error",
    "ReferenceStore", "draw_noise_and_t", "draw_seed", "flow_draw", "shift_timesteps",
]
