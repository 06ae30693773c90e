"""Run configuration: documented dataclasses, read from one YAML file plus `key=value` overrides.

Every check runs before any process group starts, and every error names the key:

    ipa train --config configs/tiny-cpu.yaml objective.beta=100 run.steps=50 --output-dir runs/a
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A bad configuration value; the message starts with the key."""


@dataclass
class ModelConfig:
    family: str = "wan-vace"
    """Transformer family: "wan-vace" (the paper's), "wan" or "wan-animate"."""
    source: object = "tiny"
    """Local diffusers folder, "tiny" (diffusers' tiny test config) or a dict of config values."""
    dtype: str = "float32"
    """Parameter dtype the model is loaded in: float32, or bfloat16 with deepspeed.bf16=true."""
    attention_backend: str = "auto"
    """auto | flash | sdpa-flash | sdpa-cudnn | sdpa-efficient | native."""
    gradient_checkpointing: bool = False
    """Recompute transformer blocks in the backward pass (policy only)."""
    seed: int = 0
    """Seed of the random weights when `source` is "tiny" or a dict (same seed: same weights)."""


@dataclass
class LoraConfig:
    enabled: bool = True
    """LoRA on `targets` (the paper: q/k/v, rank 128); false = full fine-tuning."""
    rank: int = 128
    """LoRA rank r."""
    alpha: float = 128.0
    """LoRA scale numerator (the update is scaled by alpha / rank)."""
    targets: list = field(default_factory=lambda: ["to_q", "to_k", "to_v"])
    """Module names that get adapters (PEFT `target_modules`)."""


@dataclass
class ReferenceConfig:
    mode: str = "adapter"
    """copy (second frozen model, ZeRO-sharded like the policy) | adapter (LoRA policy with adapters
    disabled) | precomputed (errors from `store`, no reference model)."""
    store: str = ""
    """Reference-error store (`ipa precompute-reference`); required for mode precomputed."""
    draws: int = 0
    """> 0: take noise and t from the deterministic per-sample draws (draw = epoch % draws) that
    `ipa precompute-reference --draws` uses; 0: fresh noise each step (seeded by run.seed)."""


@dataclass
class ObjectiveConfig:
    name: str = "ipa"
    """ipa | sft | dpo (dpo needs a loser latent `x0_loser` in every sample)."""
    beta: float = 600.0
    """IPA / DPO temperature (the paper: 600); the IPA logit is beta/2 (1 - t)^2 (err_ref - err)."""
    hand_weight: float = 10.0
    """HALO weight of hand cells (1 = plain flow matching)."""
    skip_frames: int = 1
    """Leading latent frames never hand-weighted (Wan's first frame)."""
    timestep_sampling: str = "uniform"
    """uniform | logit-normal (SD3-style, with logit_mean / logit_std)."""
    logit_mean: float = 0.0
    """Mean of the normal whose sigmoid is t (logit-normal sampling)."""
    logit_std: float = 1.0
    """Standard deviation of that normal."""
    shift: float = 1.0
    """Flow shift s' = shift s / (1 + (shift - 1) s) applied to sampled timesteps."""


@dataclass
class OptimizerConfig:
    lr: float = 1e-4
    """Peak learning rate of AdamW."""
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    """AdamW (beta1, beta2)."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    warmup_steps: int = 0
    """Linear warmup from lr / warmup_steps to lr over this many steps, then constant."""
    grad_clip: float = 1.0
    """Gradient-norm clip (0 disables)."""


@dataclass
class DeepSpeedConfig:
    zero_stage: int = 2
    """ZeRO stage 0-3. At stage 3 the copy reference is sharded too."""
    offload: bool = False
    """Offload optimizer state (and at stage 3 parameters) to CPU memory."""
    bf16: bool = False
    """bf16 mixed precision through DeepSpeed (GPU runs)."""
    config_path: str = ""
    """A full DeepSpeed JSON to use instead of the settings above (batch sizes still come from data)."""
    reference_zero3: bool = False
    """Shard the copy reference with ZeRO-3 even when the policy is on a lower stage."""


@dataclass
class DataConfig:
    path: str = ""
    """Dataset folder (ipa.data shards)."""
    micro_batch: int = 1
    """Samples per rank per forward."""
    grad_accum: int = 1
    """Micro batches per optimizer step (ignored when global_batch is set)."""
    global_batch: int = 0
    """> 0: samples per optimizer step over all ranks; grad_accum is then derived as
    global_batch / (micro_batch x ranks), which must divide exactly."""
    workers: int = 0
    """DataLoader worker processes per rank."""


@dataclass
class RunConfig:
    steps: int = 1000
    """Optimizer steps."""
    seed: int = 0
    """Seeds the data order and every (noise, t) draw."""
    output_dir: str = "runs/ipa"
    """Where config.yaml, metrics, TensorBoard, checkpoints and exports go (`--output-dir`)."""
    log_every: int = 1
    """Write a metrics row every this many steps."""
    save_every: int = 100
    """Checkpoint interval in steps (0: only at the end)."""
    resume: bool = False
    """Continue from output_dir's latest checkpoint (`--resume`). Without it, an output_dir that
    already holds checkpoints is refused rather than overwritten."""
    export: bool = True
    """Export the trained LoRA (diffusers format) or full model at the end."""
    verify_weights: bool = False
    """Record weight digests and per-rank parameter counts in rank<N>.json (gathers the weights
    under ZeRO-3: for tests and small models)."""


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self):
        return dataclasses.asdict(self)


CHOICES = {
    "model.family": ("wan-vace", "wan", "wan-animate"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "reference.mode": ("copy", "adapter", "precomputed"),
    "objective.name": ("ipa", "sft", "dpo"),
    "objective.timestep_sampling": ("uniform", "logit-normal"),
    "model.attention_backend": ("auto", "flash", "sdpa-flash", "sdpa-cudnn", "sdpa-efficient", "native"),
}


def _build(cls, data, prefix):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{prefix + '.' if prefix else ''}{unknown[0]}: unknown key "
                          f"(known: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, value in data.items():
        f = fields[name]
        key = f"{prefix}.{name}" if prefix else name
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
            kwargs[name] = _build(f.default_factory, value, key)
        else:
            kwargs[name] = _coerce(value, f.type, key)
    return cls(**kwargs)


def _coerce(value, type_name: str, key: str):
    """`value` as the field's declared type, or ConfigError naming the key.

    YAML reads `1e-4` (no dot) as a string, so numeric strings are accepted for float fields.
    """
    if type_name == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        try:
            return float(value) if isinstance(value, str) else _fail(key, "a number", value)
        except ValueError:
            _fail(key, "a number", value)
    if type_name == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        _fail(key, "an integer", value)
    if type_name == "bool":
        return value if isinstance(value, bool) else _fail(key, "true or false", value)
    if type_name == "str":
        return value if isinstance(value, str) else _fail(key, "a string", value)
    if type_name == "list":
        return list(value) if isinstance(value, (list, tuple)) else _fail(key, "a list", value)
    return value  # object: checked by validate()


def _fail(key, expected, value):
    raise ConfigError(f"{key}: must be {expected}, got {value!r}")


def _parse_value(text):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_override(raw: dict, item: str) -> None:
    """Apply one `a.b=value` override (value parsed as YAML) to the raw config mapping."""
    if "=" not in item:
        raise ConfigError(f"{item}: overrides are key=value (e.g. objective.beta=100)")
    key, value = item.split("=", 1)
    parts = key.strip().split(".")
    node = raw
    for p in parts[:-1]:
        node = _section(node, p)
    node[parts[-1]] = _parse_value(value)


def _section(node: dict, name: str) -> dict:
    """`node[name]`, created empty if absent; ConfigError when it is not a mapping."""
    sub = node.setdefault(name, {})
    if not isinstance(sub, dict):
        raise ConfigError(f"{name}: expected a mapping (a section), got {type(sub).__name__}")
    return sub


def load_config(path=None, overrides=(), output_dir=None, world_size: int | None = None) -> TrainConfig:
    """Read YAML `path` (or defaults), apply overrides, validate; ConfigError names the key.

    `world_size` (the ranks the run will have) also checks the batch layout against the dataset."""
    raw = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"--config: {str(p)!r} " + ("is a folder, not a YAML file" if p.is_dir() else "does not exist"))
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"--config: {str(p)!r} is not valid YAML ({e})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config: expected a mapping of sections, got {type(raw).__name__}")
    for item in overrides:
        apply_override(raw, item)
    if output_dir:
        _section(raw, "run")["output_dir"] = str(output_dir)
    cfg = _build(TrainConfig, raw, "")
    validate(cfg, world_size=world_size)
    return cfg


def _require(ok, key, msg):
    if not ok:
        raise ConfigError(f"{key}: {msg}")


def _adopt_deepspeed_json(ds: DeepSpeedConfig) -> None:
    """Check a user's DeepSpeed JSON and take its ZeRO stage and bf16 flag into `ds`, so the reference
    engine and the input dtype follow what the policy engine will run."""
    key = "deepspeed.config_path"
    _require(Path(ds.config_path).is_file(), key, f"{ds.config_path!r} does not exist")
    try:
        conf = json.loads(Path(ds.config_path).read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{key}: {ds.config_path!r} is not valid JSON ({e})") from None
    _require(isinstance(conf, dict), key, f"{ds.config_path!r} must hold a JSON object")
    zero = conf.get("zero_optimization", {})
    stage = zero.get("stage", 0) if isinstance(zero, dict) else None
    _require(stage in (0, 1, 2, 3), key, f"zero_optimization.stage must be 0, 1, 2 or 3, got {stage!r}")
    _require(not (conf.get("fp16") or {}).get("enabled", False), key,
             "fp16 mixed precision is not supported (use bf16: {\"bf16\": {\"enabled\": true}})")
    ds.zero_stage = stage
    ds.bf16 = bool((conf.get("bf16") or {}).get("enabled", False))


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def validate(cfg: TrainConfig, world_size: int | None = None) -> None:
    """Check values that would otherwise fail deep inside a distributed run."""
    for key, choices in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        _require(value in choices, key, f"must be one of {list(choices)}, got {value!r}")
    ds, o, d, r = cfg.deepspeed, cfg.objective, cfg.data, cfg.run
    _require(isinstance(ds.zero_stage, int) and 0 <= ds.zero_stage <= 3, "deepspeed.zero_stage",
             f"must be 0, 1, 2 or 3, got {ds.zero_stage!r}")
    if ds.config_path:
        _adopt_deepspeed_json(ds)
    # Half weights train only under DeepSpeed bf16, whose optimizer keeps the fp32 master copy:
    # AdamW on bf16 weights drops every update below 2^-8 of a weight (most of them at lr 1e-5).
    _require(cfg.model.dtype != "float16", "model.dtype",
             "float16 cannot train here (DeepSpeed's fp16 loss scaling is not supported, and under "
             "deepspeed.bf16 the weights would be rounded twice): use bfloat16 with deepspeed.bf16=true")
    _require(cfg.model.dtype == "float32" or ds.bf16, "deepspeed.bf16",
             f"must be true with model.dtype={cfg.model.dtype}: DeepSpeed's bf16 optimizer keeps the fp32 "
             "master weights; without it AdamW updates the bf16 weights themselves and loses most updates "
             "(or set model.dtype=float32)")
    _require(isinstance(o.beta, (int, float)) and o.beta > 0, "objective.beta", f"must be > 0, got {o.beta!r}")
    _require(isinstance(o.hand_weight, (int, float)) and o.hand_weight >= 0, "objective.hand_weight",
             f"must be >= 0, got {o.hand_weight!r}")
    _require(isinstance(o.skip_frames, int) and o.skip_frames >= 0, "objective.skip_frames", "must be an int >= 0")
    _require(o.shift > 0, "objective.shift", f"must be > 0, got {o.shift!r}")
    src = cfg.model.source
    if isinstance(src, str) and src != "tiny":
        _require(any((Path(src) / sub / "config.json").is_file() for sub in ("", "transformer")), "model.source",
                 f"{src!r} is not a local diffusers model folder (no config.json, nor transformer/config.json); "
                 "ipa never downloads weights")
    else:
        _require(isinstance(src, (str, dict)), "model.source", f"must be a folder, 'tiny' or a mapping, got {src!r}")
    _require(cfg.reference.draws >= 0, "reference.draws", f"must be >= 0, got {cfg.reference.draws}")
    _require(cfg.optimizer.warmup_steps >= 0, "optimizer.warmup_steps", "must be >= 0")
    _require(cfg.optimizer.grad_clip >= 0, "optimizer.grad_clip", "must be >= 0 (0 disables clipping)")
    _require(cfg.optimizer.weight_decay >= 0, "optimizer.weight_decay", "must be >= 0")
    _require(d.global_batch >= 0, "data.global_batch", "must be >= 0 (0: micro_batch x grad_accum x ranks)")
    _require(bool(d.path), "data.path", "is required (a dataset folder; `ipa data synth` makes one)")
    _require((Path(d.path) / "manifest.jsonl").is_file(), "data.path",
             f"{d.path!r} is not a dataset folder (no manifest.jsonl)")
    from ipa.data.shards import read_manifest

    info, records = read_manifest(d.path)  # read once: family, DPO pairs and the sample count below
    family = info.get("family")
    _require(family in (None, cfg.model.family), "data.path",
             f"{d.path!r} holds {family} samples, but model.family is {cfg.model.family!r}")
    for key in ("micro_batch", "grad_accum"):
        v = getattr(d, key)
        _require(isinstance(v, int) and v >= 1, f"data.{key}", f"must be an int >= 1, got {v!r}")
    _require(isinstance(d.workers, int) and d.workers >= 0, "data.workers", "must be an int >= 0")
    _require(isinstance(r.steps, int) and r.steps >= 1, "run.steps", f"must be an int >= 1, got {r.steps!r}")
    _require(isinstance(r.save_every, int) and r.save_every >= 0, "run.save_every", "must be an int >= 0")
    _require(isinstance(r.log_every, int) and r.log_every >= 1, "run.log_every", "must be an int >= 1")
    _require(cfg.optimizer.lr > 0, "optimizer.lr", f"must be > 0, got {cfg.optimizer.lr!r}")
    betas = cfg.optimizer.betas
    _require(isinstance(betas, (list, tuple)) and len(betas) == 2 and all(_is_number(b) and 0 <= b < 1 for b in betas),
             "optimizer.betas", f"must be two numbers in [0, 1) like [0.9, 0.999], got {betas!r}")
    _require(o.logit_std > 0, "objective.logit_std", f"must be > 0, got {o.logit_std!r}")
    if cfg.lora.enabled:
        _require(isinstance(cfg.lora.rank, int) and cfg.lora.rank >= 1, "lora.rank", "must be an int >= 1")
        _require(cfg.lora.alpha > 0, "lora.alpha",
                 f"must be > 0 (the update is scaled by alpha / rank), got {cfg.lora.alpha!r}")
        _require(bool(cfg.lora.targets), "lora.targets", "must list at least one module name")
    m = cfg.reference.mode
    if o.name in ("ipa", "dpo"):
        _require(m != "adapter" or cfg.lora.enabled, "reference.mode",
                 "adapter needs lora.enabled (full fine-tuning has no adapters to disable): use copy or precomputed")
        _require(m != "precomputed" or Path(cfg.reference.store).is_file(), "reference.store",
                 f"{cfg.reference.store!r} does not exist (run `ipa precompute-reference` first)")
        _require(m != "precomputed" or cfg.reference.draws > 0, "reference.draws",
                 "must be > 0 with the precomputed reference (the number of stored draws per sample)")
    if o.name == "dpo":
        lacking = [rec["id"] for rec in records if "x0_loser" not in rec.get("shapes", {})]
        _require(not lacking, "data.path", f"objective.name=dpo needs an 'x0_loser' latent in every sample; "
                 f"{len(lacking)} lack it (first: {lacking[0] if lacking else ''!r})")
    if isinstance(d.micro_batch, int) and d.micro_batch > 1:  # collate stacks a micro batch: one shape per key
        first = {}  # shapes -> the first sample with them
        for rec in records:
            first.setdefault(json.dumps(rec.get("shapes", {}), sort_keys=True), rec["id"])
        _require(len(first) == 1, "data.micro_batch",
                 f"{d.micro_batch} stacks samples, but {d.path!r} holds samples of {len(first)} different shapes "
                 f"({'; '.join(f'{sid!r}: {shapes}' for shapes, sid in list(first.items())[:2])}); use "
                 "data.micro_batch=1 or one resolution and length per dataset")
    if world_size is not None:
        if d.global_batch:
            _require(d.global_batch % (d.micro_batch * world_size) == 0, "data.global_batch",
                     f"{d.global_batch} is not divisible by micro_batch x ranks = {d.micro_batch} x {world_size}")
            d.grad_accum = d.global_batch // (d.micro_batch * world_size)

        n = len(records)
        per_step = d.micro_batch * world_size
        _require(n >= per_step, "data.micro_batch",
                 f"{n} samples cannot fill one global batch of {d.micro_batch} x {world_size} ranks")


def dump(cfg: TrainConfig) -> str:
    return yaml.safe_dump(json.loads(json.dumps(cfg.to_dict())), sort_keys=False)
