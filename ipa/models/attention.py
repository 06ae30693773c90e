"""Attention backend choice, mapped onto diffusers' attention dispatcher.

Our names and what runs (diffusers ``AttentionBackendName`` in brackets):

    flash           flash-attn 2 kernels ("flash"); needs ``flash-attn`` >= 2.6.3 (optional
                    extra ``ipa[flash]``), CUDA and fp16/bf16
    sdpa-flash      PyTorch SDPA forced to its FlashAttention-2 kernel ("_native_flash"); CUDA, fp16/bf16
    sdpa-cudnn      PyTorch SDPA forced to cuDNN attention ("_native_cudnn"); CUDA, fp16/bf16
    sdpa-efficient  PyTorch SDPA forced to the memory-efficient kernel ("_native_efficient"); CUDA
    native          plain ``F.scaled_dot_product_attention``, PyTorch picks the kernel ("native");
                    runs everywhere
    auto            flash when it can run, else native: PyTorch's own SDPA kernel choice, which
                    on an H200 (torch 2.11) ran a Wan-14B block's attention at 56% of bf16 peak
                    against 36% for sdpa-flash (benchmarks/NOTES.md)

The choice is checked here, against the device and dtype, before any forward: diffusers would
otherwise fail deep inside the first attention call.
"""

import importlib.util

import torch
from diffusers.models import attention_dispatch

DIFFUSERS_NAMES = {
    "flash": "flash",
    "sdpa-flash": "_native_flash",
    "sdpa-cudnn": "_native_cudnn",
    "sdpa-efficient": "_native_efficient",
    "native": "native",
}
BACKENDS = ("auto",) + tuple(DIFFUSERS_NAMES)
HALF = (torch.float16, torch.bfloat16)
HALF_ONLY = ("flash", "sdpa-flash", "sdpa-cudnn")  # diffusers' constraints: fp16/bf16 q, k, v


def flash_attn_usable():
    """True when diffusers will run its "flash" backend: flash-attn >= 2.6.3 that imports.

    diffusers decides this once, at import, and refuses "flash" otherwise; a looser check here
    (the package merely present) would let "auto" pick a backend diffusers then rejects.
    """
    return bool(attention_dispatch._CAN_USE_FLASH_ATTN)


def _why_not(name, device, dtype):
    """Reason `name` cannot run on (device, dtype), or None when it can."""
    cuda = device.type == "cuda"
    if name == "native":
        return None
    if not cuda:
        return f"needs a CUDA device (device is {device.type})"
    if name == "flash" and not flash_attn_usable():
        if importlib.util.find_spec("flash_attn") is not None:
            return ("needs flash-attn >= 2.6.3 that diffusers can import; the installed one is "
                    "older or fails to import (reinstall it for this torch: pip install 'ipa[flash]')")
        return "needs the flash-attn package (pip install 'ipa[flash]')"
    if name in HALF_ONLY and dtype not in HALF:
        return f"needs fp16 or bf16 (dtype is {dtype})"
    if name in HALF_ONLY and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(device)
        if major < 8:  # flash-attn 2 and SDPA's flash/cuDNN kernels start at Ampere
            return f"needs a GPU of compute capability >= 8.0 (this one is {major}.{minor})"
    if name == "sdpa-cudnn" and not torch.backends.cudnn.is_available():
        return "needs cuDNN"
    return None


def available_backends(device="cpu", dtype=torch.float32):
    """Backends (not counting "auto") that can run on this device and dtype, in preference order."""
    device = torch.device(device)
    return [n for n in DIFFUSERS_NAMES if _why_not(n, device, dtype) is None]


def resolve_backend(name, device="cpu", dtype=torch.float32):
    """Our backend name for the request `name` ("auto" resolved); ValueError if it cannot run."""
    device = torch.device(device)
    if name not in BACKENDS:
        raise ValueError(f"attention_backend must be one of {BACKENDS}, got {name!r}")
    if name == "auto":
        for candidate in ("flash", "native"):
            if _why_not(candidate, device, dtype) is None:
                return candidate
    why = _why_not(name, device, dtype)
    if why is not None:
        raise ValueError(f"attention_backend={name!r} cannot run here: it {why}; available on "
                         f"{device.type}/{dtype}: {available_backends(device, dtype)}")
    return name


def attention_dtype(model):
    """The dtype attention computes in: that of the query projections.

    Not the first parameter's: diffusers keeps a few modules in fp32 (Wan's ``scale_shift_table``
    comes first), so a bf16 model would look fp32 and lose every half-only backend.
    """
    for name, module in model.named_modules():
        if name.endswith("to_q") and isinstance(getattr(module, "weight", None), torch.Tensor):
            return module.weight.dtype
    return next(model.parameters()).dtype


def set_attention_backend(model, name, device=None, dtype=None):
    """Resolve `name` for the model's device and attention dtype, install it on every attention
    module, and return the resolved name (also kept as ``model.ipa_attention_backend``).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    resolved = resolve_backend(name, device, dtype or attention_dtype(model))
    import logging
    # diffusers logs an "experimental feature" warning on every call; keep logs readable.
    log = logging.getLogger("diffusers.models.modeling_utils")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        model.set_attention_backend(DIFFUSERS_NAMES[resolved])
    finally:
        log.setLevel(level)
    model.ipa_attention_backend = resolved
    return resolved
