"""DeepSpeed engines: the trainable policy and the frozen reference (copy | adapter | precomputed).

- Policy: `deepspeed.initialize` with AdamW over the trainable parameters (LoRA or all; DeepSpeed's
  CPU Adam when the optimizer is offloaded),
  ZeRO stage 0-3, a warmup LR schedule; built under `zero.Init` at stage 3 so no rank ever
  materializes the whole model.
- Reference `copy`: a second model built from the same source (never `deepcopy`), frozen, in its
  own DeepSpeed engine without optimizer: ZeRO-3 sharded when the policy is on stage 3 (or
  `deepspeed.reference_zero3`), else a replica.
- Reference `adapter`: the policy engine's own module with the LoRA adapters disabled.
- Reference `precomputed`: no model, errors from the store `ipa precompute-reference` wrote.
"""

from __future__ import annotations

import contextlib
import json

import torch

from ipa import models
from ipa.models.reference import AdapterReference, PrecomputedReference, Reference

from . import zero3 as zero3_load
from .config import TrainConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def compute_dtype(cfg: TrainConfig) -> torch.dtype:
    """The dtype the model computes in: bf16 under DeepSpeed bf16 (it casts the weights), else model.dtype."""
    return torch.bfloat16 if cfg.deepspeed.bf16 else DTYPES[cfg.model.dtype]


def model_width(config) -> int:
    """Hidden size of a diffusers Wan config (heads x head_dim: these configs have no hidden_size)."""
    return int(config["num_attention_heads"]) * int(config["attention_head_dim"])


def deepspeed_config(cfg: TrainConfig, world_size: int, *, width: int | None = None, stage: int | None = None,
                     inference: bool = False) -> dict:
    """The DeepSpeed JSON of the policy (or, `inference=True`, of the frozen reference)."""
    d, ds = cfg.data, cfg.deepspeed
    if ds.config_path and not inference:
        with open(ds.config_path) as f:
            conf = json.load(f)
    else:
        stage = ds.zero_stage if stage is None else stage
        zero = {"stage": stage}
        if stage == 3 and width:
            # TRL's recipe: buckets and persistence from the model width.
            zero.update(reduce_bucket_size=width * width, stage3_prefetch_bucket_size=int(0.9 * width * width),
                        stage3_param_persistence_threshold=10 * width)
        if ds.offload and not inference:
            zero["offload_optimizer"] = {"device": "cpu"}
        if ds.offload and stage == 3:
            zero["offload_param"] = {"device": "cpu"}
        conf = {"zero_optimization": zero, "bf16": {"enabled": bool(ds.bf16)}}
    if not inference and cfg.optimizer.grad_clip > 0:  # the optimizer section's, unless the JSON sets it
        conf.setdefault("gradient_clipping", cfg.optimizer.grad_clip)
    conf.update(train_micro_batch_size_per_gpu=d.micro_batch, gradient_accumulation_steps=d.grad_accum,
                train_batch_size=d.micro_batch * d.grad_accum * world_size)
    conf.setdefault("steps_per_print", 10**9)
    conf.setdefault("zero_allow_untested_optimizer", True)
    conf.setdefault("zero_force_ds_cpu_optimizer", False)
    return conf


def _zero_init(conf, enabled):
    import deepspeed

    return deepspeed.zero.Init(config_dict_or_path=conf) if enabled else contextlib.nullcontext()


def _build_model(cfg: TrainConfig, device, conf, zero3: bool):
    """The transformer of `cfg.model`; at ZeRO-3 partitioned from birth (see `ipa.train.zero3`)."""
    m = cfg.model
    # Import diffusers (and through it torch._dynamo) before zero.Init patches tensor constructors:
    # importing it inside that context fails.
    cls = models.model_class(m.family)
    source = m.source
    from_folder = zero3 and not isinstance(source, dict) and source != "tiny"
    if from_folder:  # from_pretrained cannot run under zero.Init: build from config, stream weights in
        found = zero3_load.folder_config(source).get("_class_name")
        if found is not None and found != cls.__name__:
            raise ValueError(f"model.source: {source!r} holds a {found}, but model.family={m.family!r} "
                             f"needs {cls.__name__}")
        source = {k: v for k, v in zero3_load.folder_config(source).items() if not k.startswith("_")}
    with _zero_init(conf, zero3):
        model = models.build_transformer(m.family, source, dtype=DTYPES[m.dtype],
                                         attention_backend=m.attention_backend,
                                         gradient_checkpointing=m.gradient_checkpointing,
                                         seed=m.seed, device=device)
    if zero3:
        zero3_load.align_partitioned_dtypes(model)
        zero3_load.recompute_rope_tables(model)
    if from_folder:
        zero3_load.load_weights(model, m.source)
        model.ipa_build = {**getattr(model, "ipa_build", {}), "source": m.source}
    return model


def warmup_schedule(optimizer, warmup_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0)


def build_policy(cfg: TrainConfig, device, world_size: int):
    """(DeepSpeed engine, its DeepSpeed config) for the trainable policy."""
    import deepspeed

    width = model_width(models.tiny_config(cfg.model.family) if cfg.model.source == "tiny" else
                        _source_config(cfg))
    conf = deepspeed_config(cfg, world_size, width=width)
    stage = cfg.deepspeed.zero_stage  # validate() took it from a user's JSON, if any
    model = _build_model(cfg, device, conf, zero3=stage == 3)
    if cfg.lora.enabled:
        models.add_lora(model, rank=cfg.lora.rank, alpha=cfg.lora.alpha, target_modules=tuple(cfg.lora.targets))
    else:
        models.full_finetune(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(cfg, conf, params)
    o = cfg.optimizer
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=warmup_schedule(optimizer, o.warmup_steps), config=conf)
    return engine, conf


def make_optimizer(cfg: TrainConfig, conf: dict, params):
    """AdamW; DeepSpeed's vectorized CPU Adam when ZeRO offloads the optimizer to CPU memory (torch's
    AdamW there runs the whole 14B update on the host at a fraction of the speed). The CPU Adam
    op is compiled on first use (about 1.5 min, then cached)."""
    o = cfg.optimizer
    kw = dict(lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    offload = (conf.get("zero_optimization", {}).get("offload_optimizer") or {}).get("device", "none")
    if offload == "cpu":
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(params, adamw_mode=True, **kw)
    return torch.optim.AdamW(params, **kw)


def _source_config(cfg):
    src = cfg.model.source
    if isinstance(src, dict):
        return {**models.tiny_config(cfg.model.family), **src}
    return zero3_load.folder_config(src)


def build_reference(cfg: TrainConfig, engine, device, world_size: int, store=None) -> Reference:
    """The frozen reference for `cfg.reference.mode` (None for the sft objective); `store`: the
    precomputed mode's `ReferenceStore`, already loaded (else read from reference.store)."""
    import deepspeed

    if cfg.objective.name == "sft":
        return None
    mode = cfg.reference.mode
    if mode == "adapter":
        return AdapterReference(engine, family=cfg.model.family)
    if mode == "precomputed":
        return PrecomputedReference(store if store is not None else cfg.reference.store)
    policy_stage = engine.zero_optimization_stage()
    stage = 3 if (policy_stage == 3 or cfg.deepspeed.reference_zero3) else 0
    conf = deepspeed_config(cfg, world_size, width=model_width(engine.module.config), stage=stage, inference=True)
    model = _build_model(cfg, device, conf, zero3=stage == 3)
    model.requires_grad_(False).eval()
    ref_engine, *_ = deepspeed.initialize(model=model, config=conf)
    ref_engine.eval()
    return _EngineReference(ref_engine, cfg.model.family)


class _EngineReference(Reference):
    """`copy` reference whose model is a DeepSpeed engine (ZeRO-3 sharded or a replica)."""

    mode = "copy"

    def __init__(self, engine, family):
        self.model, self.family = engine, family

    def predict(self, batch, noisy_latents, timesteps):
        with torch.no_grad():
            return models.forward(self.model, self.family, batch, noisy_latents, timesteps)


def local_and_full_numel(module) -> tuple[int, int]:
    """(elements this rank holds, elements of the whole model): differ under ZeRO-3."""
    local = full = 0
    for p in module.parameters():
        if hasattr(p, "ds_tensor"):
            local += p.ds_tensor.numel()
            full += p.ds_numel
        else:
            local += p.numel()
            full += p.numel()
    return local, full


def weights_digest(module, select=None) -> str:
    """sha256 of the weights `select(name, param)` picks (default: all), equal on every rank.

    ZeRO-3 shards are gathered one parameter at a time, so no rank ever holds the whole model.
    """
    import hashlib

    import deepspeed

    h = hashlib.sha256()
    for name, p in module.named_parameters():
        if select is not None and not select(name, p):
            continue
        with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
            h.update(name.encode())
            h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()
