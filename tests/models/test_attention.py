import pytest
import torch

from ipa.models import available_backends, build_transformer, forward, resolve_backend, tiny_config
from ipa.models.attention import DIFFUSERS_NAMES, attention_dtype, flash_attn_usable, set_attention_backend

from .conftest import batch_for, tiny


def processors(model):
    return [m.processor for m in model.modules() if hasattr(getattr(m, "processor", None), "_attention_backend")]


def test_auto_on_cpu_is_native_and_installed_on_every_processor():
    model = tiny("wan-vace")
    assert model.ipa_attention_backend == "native"
    procs = processors(model)
    assert procs and all(p._attention_backend == "native" for p in procs)
    assert resolve_backend("auto", "cpu", torch.bfloat16) == "native"
    assert available_backends("cpu", torch.float32) == ["native"]


def test_auto_prefers_flash_attn_then_pytorchs_own_sdpa_choice_on_cuda(monkeypatch):
    """Without flash-attn, "auto" leaves the kernel to PyTorch ("native"): on an H200 it chose
    cuDNN's, 1.4x faster than forcing SDPA's FlashAttention-2 (benchmarks/NOTES.md)."""
    import ipa.models.attention as attn

    monkeypatch.setattr(attn, "flash_attn_usable", lambda: True)
    assert resolve_backend("auto", "cuda", torch.bfloat16) == "flash"
    assert resolve_backend("auto", "cuda", torch.float32) == "native"  # no fp32 flash kernels
    monkeypatch.setattr(attn, "flash_attn_usable", lambda: False)
    assert resolve_backend("auto", "cuda", torch.float16) == "native"
    assert "sdpa-efficient" in available_backends("cuda", torch.float32)


@pytest.mark.skipif(flash_attn_usable(), reason="flash-attn is usable here")
def test_flash_without_flash_attn_is_a_clear_error():
    with pytest.raises(ValueError, match=r"flash-attn.*available on cpu.*\['native'\]|CUDA.*\['native'\]"):
        build_transformer("wan", "tiny", dtype=torch.bfloat16, attention_backend="flash")
    with pytest.raises(ValueError, match="flash-attn"):
        resolve_backend("flash", "cuda", torch.bfloat16)


@pytest.mark.parametrize("name", ["sdpa-flash", "sdpa-cudnn", "sdpa-efficient"])
def test_sdpa_kernels_on_cpu_are_refused_listing_alternatives(name):
    with pytest.raises(ValueError, match=r"needs a CUDA device.*\['native'\]"):
        resolve_backend(name, "cpu", torch.bfloat16)


def test_half_only_kernels_refuse_fp32_on_cuda(monkeypatch):
    import ipa.models.attention as attn

    monkeypatch.setattr(attn, "flash_attn_usable", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    for name in ("flash", "sdpa-flash", "sdpa-cudnn"):
        with pytest.raises(ValueError, match=r"needs fp16 or bf16 \(dtype is torch.float32\).*sdpa-efficient"):
            resolve_backend(name, "cuda", torch.float32)
        assert resolve_backend(name, "cuda", torch.bfloat16) == name
    assert available_backends("cuda", torch.float32) == ["sdpa-efficient", "native"]


def test_flash_attn_present_but_unusable_by_diffusers_is_refused(monkeypatch):
    """A flash-attn older than diffusers' minimum, or built for another torch, is installed but
    refused by diffusers: "auto" must move on and an explicit "flash" must say why."""
    import importlib.util

    import ipa.models.attention as attn

    monkeypatch.setattr(attn.attention_dispatch, "_CAN_USE_FLASH_ATTN", False)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: object() if n == "flash_attn" else real_find_spec(n, *a))
    assert resolve_backend("auto", "cuda", torch.bfloat16) == "native"
    with pytest.raises(ValueError, match=r"flash-attn >= 2.6.3 .*older or fails to import"):
        resolve_backend("flash", "cuda", torch.bfloat16)
    monkeypatch.setattr(attn.attention_dispatch, "_CAN_USE_FLASH_ATTN", True)
    assert resolve_backend("auto", "cuda", torch.bfloat16) == "flash"


def test_half_only_kernels_refuse_pre_ampere_gpus(monkeypatch):
    import ipa.models.attention as attn

    monkeypatch.setattr(attn, "flash_attn_usable", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    with pytest.raises(ValueError, match=r"compute capability >= 8.0 \(this one is 7.0\)"):
        resolve_backend("sdpa-flash", "cuda", torch.float16)
    assert resolve_backend("auto", "cuda", torch.float16) == "native"
    assert available_backends("cuda", torch.float16) == ["sdpa-efficient", "native"]


def test_flash_extra_pins_diffusers_minimum():
    """setup.py's `flash` extra asks for the flash-attn version diffusers requires."""
    from pathlib import Path

    from diffusers.models.attention_dispatch import _REQUIRED_FLASH_VERSION

    setup_py = (Path(__file__).parents[2] / "setup.py").read_text()
    assert f'"flash-attn>={_REQUIRED_FLASH_VERSION}"' in setup_py


@pytest.mark.parametrize("family", ["wan-vace", "wan", "wan-animate"])
def test_half_models_keep_half_only_backends(family):
    """diffusers keeps some modules in fp32 (the first parameter among them): the backend is
    chosen for the dtype attention runs in, so a bf16 model on CUDA can use sdpa-flash."""
    model = build_transformer(family, "tiny", dtype=torch.bfloat16, seed=0)
    assert next(model.parameters()).dtype == torch.float32  # what used to decide
    assert attention_dtype(model) == torch.bfloat16
    assert set_attention_backend(model, "sdpa-flash", device="cuda") == "sdpa-flash"
    assert all(p._attention_backend == "_native_flash" for p in processors(model))


def test_dtype_rules_match_diffusers_constraints():
    """Our fp16/bf16-only list against the constraints diffusers registers for each backend (a
    private registry: if diffusers reshapes it, this test says so rather than drifting silently)."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    from ipa.models.attention import HALF_ONLY

    q = torch.zeros(1, 4, 2, 8)  # [B, S, heads, head_dim], fp32
    for name, diffusers_name in DIFFUSERS_NAMES.items():
        checks = _AttentionBackendRegistry._constraints[AttentionBackendName(diffusers_name)]
        try:
            for check in checks:
                check(query=q, key=q, value=q, attn_mask=None)
            fp32_ok = True
        except ValueError:
            fp32_ok = False
        assert fp32_ok == (name not in HALF_ONLY), (name, [c.__name__ for c in checks])


def test_unknown_backend_names_the_argument():
    with pytest.raises(ValueError, match="attention_backend must be one of"):
        resolve_backend("xformers")


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["flash", "sdpa-cudnn", "sdpa-efficient"])
def test_cuda_backends_agree_with_sdpa_flash_in_bf16(name):
    if name not in available_backends("cuda", torch.bfloat16):
        pytest.skip(f"{name} cannot run here")
    cfg = {**tiny_config("wan-vace"), "attention_head_dim": 64}  # flash kernels want head_dim % 8 == 0
    kw = dict(dtype=torch.bfloat16, seed=0, device="cuda")
    ref = build_transformer("wan-vace", cfg, attention_backend="sdpa-flash", **kw)
    other = build_transformer("wan-vace", cfg, attention_backend=name, **kw)
    batch = {k: (v.to("cuda", torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() else v)
             for k, v in batch_for("wan-vace", ref).items()}
    t = torch.tensor([0.3, 0.7], device="cuda")
    with torch.no_grad():
        a = forward(ref, "wan-vace", batch, batch["x0"], t).float()
        b = forward(other, "wan-vace", batch, batch["x0"], t).float()
    assert (a - b).abs().max() <= 2e-2 * a.abs().max()


def test_every_name_maps_to_a_diffusers_backend():
    from diffusers.models.attention_dispatch import AttentionBackendName

    # AttentionBackendName(v) raises ValueError for a name diffusers does not know
    mapped = {AttentionBackendName(v) for v in DIFFUSERS_NAMES.values()}
    assert len(mapped) == len(DIFFUSERS_NAMES)  # no two of our names share a diffusers backend
