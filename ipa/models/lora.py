"""LoRA through PEFT (diffusers' own adapter API), full fine-tuning, and diffusers-format export.

The paper trains LoRA rank 128 (alpha 128) on the attention q/k/v projections only; every
``to_q``/``to_k``/``to_v`` in the model matches (self- and cross-attention, VACE blocks).
"""

import contextlib
from pathlib import Path

ADAPTER = "default"
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' default file name


def add_lora(model, rank=128, alpha=128, target_modules=("to_q", "to_k", "to_v"), *, dropout=0.0):
    """Freeze the base weights and attach a trainable LoRA adapter; returns `model`.

    Uses ``model.add_adapter(LoraConfig(...))`` as diffusers' training scripts do. The B matrices
    start at zero, so the policy starts exactly at the base model. Adapter weights take the dtype
    of the layers they wrap; keep an fp32 master copy in the optimizer (DeepSpeed does).
    """
    from peft import LoraConfig

    if not (isinstance(rank, int) and rank >= 1):
        raise ValueError(f"rank must be a positive int, got {rank!r}")
    if not (isinstance(alpha, (int, float)) and alpha > 0):
        raise ValueError(f"alpha must be a number > 0, got {alpha!r}")
    targets = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in targets if t not in names]
    if not targets or missing:
        raise ValueError(f"target_modules {missing or targets} match no module of {type(model).__name__}")
    model.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=dropout,
                        init_lora_weights=True)
    if hasattr(model, "add_adapter"):  # diffusers models: keeps peft_config for export
        model.add_adapter(config, adapter_name=ADAPTER)
    else:  # a bare nn.Module (e.g. one transformer block in the benchmark)
        from peft import inject_adapter_in_model
        inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    return model


def lora_layers(model):
    """The PEFT tuner layers of `model`, in module order (cache them: the walk is ~0.4 ms)."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


def has_lora(model):
    """True when `model` holds LoRA (PEFT tuner) layers."""
    return bool(lora_layers(model))


def full_finetune(model):
    """Make every parameter trainable (the full fine-tuning alternative to `add_lora`)."""
    if has_lora(model):
        raise ValueError("model has a LoRA adapter; full fine-tuning trains the base weights, build a fresh model")
    return model.requires_grad_(True)


def trainable_parameters(model):
    """``[(name, param)]`` of what trains: the LoRA weights after `add_lora`, else what requires grad."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


_FLAG_FOLLOWS = {}  # tuner layer class -> its `disable_adapters` reads `_disable_adapters`


def _flag_toggles(layers):
    """True when flipping ``_disable_adapters`` disables each layer (PEFT >= 0.6), probed once a class."""
    for layer in layers:
        if getattr(layer, "merged", False) or not isinstance(getattr(layer, "_disable_adapters", None), bool):
            return False
        cls = type(layer)
        if cls not in _FLAG_FOLLOWS:
            before = layer._disable_adapters
            layer._disable_adapters = not before
            _FLAG_FOLLOWS[cls] = layer.disable_adapters is (not before)
            layer._disable_adapters = before
        if not _FLAG_FOLLOWS[cls]:
            return False
    return True


@contextlib.contextmanager
def adapters_disabled(model, layers=None):
    """Run the LoRA model as its base model inside the block (the ``adapter`` reference).

    `layers`: `lora_layers(model)`, when the caller keeps them (saves the module walk each call).
    PEFT's ``enable_adapters`` toggle also rewrites ``requires_grad`` on every adapter weight, ~1.5 ms
    a step for 36 layers, which is nothing to a reference forward run under ``no_grad``; so the
    layers' disable flag is flipped directly, and the public toggle (with the flags restored) is
    the fallback for merged adapters or a PEFT whose flag works otherwise.
    """
    layers = lora_layers(model) if layers is None else layers
    if not layers:
        raise ValueError("model has no LoRA adapter to disable (call ipa.models.add_lora first)")
    if _flag_toggles(layers):
        before = [layer._disable_adapters for layer in layers]
        for layer in layers:
            layer._disable_adapters = True
        try:
            yield model
        finally:
            for layer, flag in zip(layers, before):
                layer._disable_adapters = flag
        return
    flags = [(p, p.requires_grad) for layer in layers for p in layer.parameters()]  # all enable_adapters touches
    for layer in layers:  # what diffusers' disable_adapters does, on any nn.Module
        layer.enable_adapters(False)
    try:
        yield model
    finally:
        for layer in layers:
            layer.enable_adapters(True)
        for p, flag in flags:
            p.requires_grad_(flag)


def lora_state_dict(model):
    """The adapter weights with PEFT keys (``blocks.0.attn1.to_q.lora_A.weight``, ...), the form
    diffusers' own LoRA training scripts save for transformers."""
    from peft.utils import get_peft_model_state_dict

    if not getattr(model, "peft_config", None):
        raise ValueError("model has no LoRA adapter to export (add one with ipa.models.add_lora)")
    return get_peft_model_state_dict(model, adapter_name=ADAPTER)


def export_lora(model, path, *, weight_name=LORA_WEIGHT_NAME):
    """Write the LoRA as a diffusers LoRA folder that ``WanVACEPipeline.load_lora_weights(path)``
    (or ``transformer.load_lora_adapter``) loads. Returns the safetensors file path.

    Written through ``WanLoraLoaderMixin.save_lora_weights`` (the classmethod behind WanPipeline and
    WanVACEPipeline): keys prefixed ``transformer.``, the LoraConfig (rank, alpha, targets) stored as
    metadata so loaders restore the same scaling.
    """
    from diffusers.loaders import WanLoraLoaderMixin

    state = {k: v.detach().to("cpu").contiguous() for k, v in lora_state_dict(model).items()}
    meta = model.peft_config[ADAPTER].to_dict()
    meta["target_modules"] = sorted(meta["target_modules"])  # sets are not JSON
    Path(path).mkdir(parents=True, exist_ok=True)
    WanLoraLoaderMixin.save_lora_weights(path, transformer_lora_layers=state, weight_name=weight_name,
                                         transformer_lora_adapter_metadata=meta)
    return Path(path) / weight_name


def load_lora(model, path, *, weight_name=LORA_WEIGHT_NAME, adapter_name=ADAPTER):
    """Load an exported LoRA into a bare transformer the way pipelines do; returns `model`."""
    from diffusers.loaders import WanLoraLoaderMixin

    state, meta = WanLoraLoaderMixin.lora_state_dict(path, weight_name=weight_name, return_lora_metadata=True)
    model.load_lora_adapter(state, prefix="transformer", adapter_name=adapter_name, metadata=meta)
    return model
