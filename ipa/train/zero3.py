"""Building a model whose parameters are ZeRO-3 partitioned from birth (`deepspeed.zero.Init`).

diffusers' `from_pretrained` knows nothing of DeepSpeed: it builds on the meta device and copies a
full state dict in, which fails under `zero.Init` ("Cannot copy out of meta tensor"). So for ZeRO-3
the model is built from its config.json under `zero.Init` (each rank keeps only its slice), and
the checkpoint's safetensors are streamed in one module at a time: the module's parameters are
gathered, rank 0 copies them from the memory-mapped file, and leaving the context re-partitions
them. No rank ever holds more than one module's full weights. (The same scheme as transformers'
ZeRO-3 loading.)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist

WEIGHTS = "diffusion_pytorch_model.safetensors"


def model_folder(source) -> Path:
    """The folder holding config.json: `source` itself or its `transformer/` (a pipeline folder)."""
    path = Path(source)
    for cand in (path, path / "transformer"):
        if (cand / "config.json").is_file():
            return cand
    raise ValueError(f"model.source: no config.json in {str(path)!r} (or its transformer/ folder)")


def folder_config(source) -> dict:
    """config.json of a local diffusers model folder."""
    return json.loads((model_folder(source) / "config.json").read_text())


def weight_map(folder: Path) -> dict[str, Path]:
    """Parameter name -> safetensors file, for a single-file or sharded (index.json) checkpoint."""
    index = folder / (WEIGHTS + ".index.json")
    if index.is_file():
        names = json.loads(index.read_text())["weight_map"]
        return {k: folder / v for k, v in names.items()}
    single = folder / WEIGHTS
    if single.is_file():
        from safetensors import safe_open

        with safe_open(str(single), "pt") as f:
            return {k: single for k in f.keys()}  # noqa: SIM118 (a safetensors handle, not a dict)
    raise ValueError(f"model.source: {str(folder)!r} has no {WEIGHTS} (or its .index.json); "
                     "ZeRO-3 loading reads safetensors checkpoints only")


def align_partitioned_dtypes(model) -> None:
    """Make each partitioned parameter's placeholder dtype match its shard.

    `build_transformer` casts `_keep_in_fp32_modules` to fp32 via `p.data`, which under ZeRO-3
    only touches the empty placeholder while the shard stays in `zero.Init`'s dtype; the model then
    reads the placeholder dtype (e.g. Wan's time embedder) and feeds fp32 into bf16 weights.
    """
    for p in model.parameters():
        if hasattr(p, "ds_tensor") and p.dtype != p.ds_tensor.dtype:
            p.data = p.data.to(p.ds_tensor.dtype)


def recompute_rope_tables(model) -> None:
    """Recompute the rotary position tables that `zero.Init` built in the training dtype.

    Inside `zero.Init` every floating tensor a constructor returns (`torch.arange` included) is
    cast to bf16/fp16, so diffusers' RoPE angles come out rounded: 0.2 rad off at position 52 for
    a 128-wide head. The tables are non-persistent buffers, never loaded from a checkpoint, so
    nothing repairs them; built again here, outside `zero.Init`, they match a plain build exactly.
    """
    for module in model.modules():
        if type(module).__name__ != "WanRotaryPosEmbed":  # transformer_wan's and wan_animate's
            continue
        # Wan builds its RoPE with the default theta, so the stored arguments suffice.
        fresh = type(module)(module.attention_head_dim, module.patch_size, module.max_seq_len)
        with torch.no_grad():
            for name, table in fresh.named_buffers(recurse=False):
                getattr(module, name).copy_(table)


def load_weights(model, source) -> None:
    """Copy the checkpoint of the local folder `source` into the ZeRO-3 partitioned `model`.

    Every rank runs the same sequence of collectives; only rank 0 reads tensor data. A missing or
    mis-shaped parameter raises ValueError on every rank (checked from the file headers) before
    any collective starts.
    """
    import deepspeed
    from safetensors import safe_open

    folder = model_folder(source)
    files = weight_map(folder)
    params = dict(model.named_parameters())
    missing = sorted(set(params) - set(files))
    if missing:
        raise ValueError(f"model.source: {str(folder)!r} lacks {len(missing)} parameter(s) of the model, "
                         f"e.g. {missing[:3]}")
    handles = {}

    def handle(name):
        path = files[name]
        if path not in handles:
            handles[path] = safe_open(str(path), "pt", device="cpu")  # header only; data is mmapped
        return handles[path]

    for name, p in params.items():
        shape = tuple(p.ds_shape if hasattr(p, "ds_shape") else p.shape)
        stored = tuple(handle(name).get_slice(name).get_shape())
        if stored != shape:
            raise ValueError(f"model.source: {name} is {list(stored)} in the checkpoint, the model "
                             f"config says {list(shape)}")
    rank = dist.get_rank()
    with torch.no_grad():
        for mod_name, module in model.named_modules():
            own = [(f"{mod_name}.{n}" if mod_name else n, p) for n, p in module.named_parameters(recurse=False)]
            if not own:
                continue
            # Gather this module's parameters, fill them on rank 0, re-partition on exit.
            with deepspeed.zero.GatheredParameters([p for _, p in own], modifier_rank=0):
                if rank == 0:
                    for name, p in own:
                        p.data.copy_(handle(name).get_tensor(name).to(p.dtype))
        buffers = dict(model.named_buffers())
        for name in set(buffers) & set(files):  # persistent buffers are replicated, not partitioned
            buffers[name].copy_(handle(name).get_tensor(name).to(buffers[name].dtype))
