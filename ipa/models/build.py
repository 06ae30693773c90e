"""Build a diffusers Wan transformer from a local folder, a config dict, or a tiny test config.

Never downloads: folders load with ``local_files_only=True``. The tiny configs are diffusers' own
test configs (tests/models/transformers/test_models_transformer_wan*.py), with one change noted
below, so CPU tests exercise the real model classes.
"""

import inspect
import json
from pathlib import Path

import torch

from .attention import set_attention_backend
from .inputs import check_family


def model_class(family):
    """The diffusers model class of `family`."""
    check_family(family)
    import diffusers
    return {
        "wan-vace": diffusers.WanVACETransformer3DModel,
        "wan": diffusers.WanTransformer3DModel,
        "wan-animate": diffusers.WanAnimateTransformer3DModel,
    }[family]


_TINY_COMMON = {
    "patch_size": (1, 2, 2), "num_attention_heads": 2, "attention_head_dim": 12, "freq_dim": 256,
    "ffn_dim": 32, "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 32,
}

TINY_CONFIGS = {
    # diffusers' tiny VACE config, except vace_in_channels: 96 = 16 + 16 + 64 (inactive | reactive |
    # 8x8-unfolded mask), the real model's control layout, instead of the test's arbitrary 48.
    "wan-vace": {**_TINY_COMMON, "in_channels": 16, "out_channels": 16, "text_dim": 32, "num_layers": 4,
                 "vace_layers": [0, 2], "vace_in_channels": 96},
    "wan": {**_TINY_COMMON, "in_channels": 4, "out_channels": 4, "text_dim": 16, "num_layers": 2},
    "wan-animate": {**_TINY_COMMON, "in_channels": 12, "latent_channels": 4, "out_channels": 4,
                    "text_dim": 16, "num_layers": 2, "image_dim": 16,
                    "motion_encoder_channel_sizes": {"4": 16, "8": 16, "16": 16},
                    "motion_encoder_size": 16, "motion_style_dim": 8, "motion_dim": 4,
                    "motion_encoder_dim": 16, "face_encoder_hidden_dim": 16, "face_encoder_num_heads": 2,
                    "inject_face_latents_blocks": 2},
}


def tiny_config(family):
    """A copy of the tiny config of `family` (a plain dict of constructor arguments)."""
    check_family(family)
    return json.loads(json.dumps(TINY_CONFIGS[family]))  # deep copy; tuples become lists, as in config.json


def _from_folder(cls, family, path, dtype):
    path = Path(path)
    if not path.exists():
        raise ValueError(f"source {str(path)!r} does not exist (expected a local diffusers model folder, "
                         f"'tiny', or a config dict; ipa never downloads weights)")
    subfolder = None
    if not (path / "config.json").is_file():
        if (path / "transformer" / "config.json").is_file():
            subfolder = "transformer"  # a pipeline folder: take its transformer
        else:
            raise ValueError(f"source {str(path)!r} has neither config.json nor transformer/config.json")
    config_path = path / (subfolder or "") / "config.json"
    try:
        cfg = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"source: {str(config_path)!r} is not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"source: {str(config_path)!r} must hold a JSON mapping of config values")
    found = cfg.get("_class_name")
    if found is not None and found != cls.__name__:
        # Loading e.g. a VACE checkpoint as "wan" would silently drop the control branch.
        raise ValueError(f"source {str(path)!r} holds a {found}, but family={family!r} needs {cls.__name__}")
    return cls.from_pretrained(path, subfolder=subfolder, torch_dtype=dtype, local_files_only=True)


def _check_config_keys(cls, cfg: dict) -> None:
    """diffusers ignores unknown keys with a warning and builds the defaults (a full-size model):
    refuse them instead, so a misspelt key is an error, not minutes of building the wrong model."""
    known = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(k for k in cfg if k not in known and not k.startswith("_"))
    if unknown:
        raise ValueError(f"source: unknown {cls.__name__} config key(s) {unknown}; known: {sorted(known)}")


def _from_config(cls, cfg, seed):
    with torch.random.fork_rng(devices=[]):  # seeded init without disturbing the caller's RNG
        if seed is not None:
            torch.manual_seed(seed)
        return cls.from_config(cfg)


def _cast(model, dtype):
    """Cast to `dtype` but keep the class's ``_keep_in_fp32_modules`` in fp32, as
    ``from_pretrained(torch_dtype=...)`` does (so tiny and loaded models behave alike)."""
    keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point():
            fp32 = any(k in name.split(".") for k in keep)
            t.data = t.data.to(torch.float32 if fp32 else dtype)
    return model


def build_transformer(family, source, *, dtype, attention_backend="auto", gradient_checkpointing=False,
                      seed=None, device="cpu"):
    """A diffusers transformer of `family`, on `device` in `dtype`, attention backend installed.

    Args:
        family: "wan-vace" (WanVACETransformer3DModel), "wan" (WanTransformer3DModel) or
            "wan-animate" (WanAnimateTransformer3DModel).
        source: a local diffusers folder (the transformer folder or a pipeline folder with a
            ``transformer/`` subfolder), "tiny" (diffusers' tiny test config, random weights),
            or a dict of config values (random weights).
        dtype: parameter dtype (torch.float32 / bfloat16 / float16).
        attention_backend: see `ipa.models.attention` ("auto" picks for device and dtype).
        gradient_checkpointing: recompute each block in backward (policy under memory pressure).
        seed: for "tiny"/dict sources, seed the random init so equal seeds give equal weights;
            None draws from the global torch RNG.
        device: where the model lives.
    The chosen backend is kept as ``model.ipa_attention_backend``, and the build arguments as
    ``model.ipa_build`` (what a ``copy`` reference needs to load a second instance).
    """
    cls = model_class(family)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    if isinstance(source, dict):
        _check_config_keys(cls, source)
        model = _from_config(cls, source, seed)
    elif source == "tiny":
        model = _from_config(cls, tiny_config(family), seed)
    elif isinstance(source, (str, Path)):
        model = _from_folder(cls, family, source, dtype)
    else:
        raise ValueError(f"source must be a local folder path, 'tiny' or a config dict, got {type(source).__name__}")
    model = _cast(model.to(device=device), dtype)
    set_attention_backend(model, attention_backend, device=device, dtype=dtype)
    if gradient_checkpointing:
        model.enable_gradient_checkpointing()
    model.ipa_build = {"family": family, "source": source, "dtype": dtype, "seed": seed,
                       "attention_backend": attention_backend, "device": device}
    return model
