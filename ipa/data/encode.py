"""The encoders prepare and curate share: Wan VAE latents (normalized as WanVACEPipeline does), the
VACE control tensor, and umT5 prompt embeddings (or one cached embedding)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch


def _subfolder(path: Path, name: str, arg: str) -> str | None:
    """None when `path` itself holds config.json, `name` when it is a pipeline folder."""
    if (path / "config.json").is_file():
        return None
    if (path / name / "config.json").is_file():
        return name
    raise ValueError(f"{arg} {str(path)!r} has neither config.json nor {name}/config.json "
                     "(expected a local diffusers model or pipeline folder; ipa never downloads weights)")


def load_vae(path, *, dtype=torch.float32, device="cpu"):
    """`AutoencoderKLWan` from a local folder (the VAE's own folder or a pipeline folder)."""
    from diffusers import AutoencoderKLWan

    path = Path(path)
    if not path.exists():
        raise ValueError(f"--vae {str(path)!r} does not exist")
    sub = _subfolder(path, "vae", "--vae")
    vae = AutoencoderKLWan.from_pretrained(path, subfolder=sub, torch_dtype=dtype, local_files_only=True)
    return vae.to(device).eval()


class LatentCodec:
    """Encode/decode pixel clips with a Wan VAE in the normalized latent space the transformer sees:
    ``(z - latents_mean) / latents_std`` per channel (the VAE config's statistics)."""

    def __init__(self, vae):
        self.vae = vae
        z = vae.config.z_dim
        self.mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32).view(1, z, 1, 1, 1)
        self.std = torch.tensor(vae.config.latents_std, dtype=torch.float32).view(1, z, 1, 1, 1)
        self._zero_cache = {}

    @property
    def device(self):
        return next(self.vae.parameters()).device

    @staticmethod
    def to_pixels(frames: np.ndarray) -> torch.Tensor:
        """RGB uint8 `[T, H, W, 3]` -> float `[1, 3, T, H, W]` in [-1, 1]."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).float().div(127.5).sub(1.0)
        return x.permute(3, 0, 1, 2).unsqueeze(0)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """`[1, 3, T, H, W]` in [-1, 1] -> normalized latents `[C, F, H/8, W/8]` (float32).
        The distribution's mode, as the pipeline's ``sample_mode="argmax"``."""
        dist = self.vae.encode(pixels.to(self.device, self.vae.dtype)).latent_dist
        z = dist.mode().float().cpu()
        return ((z - self.mean) / self.std)[0]

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Normalized latents `[C, F, h, w]` -> RGB uint8 frames `[4(F-1)+1, 8h, 8w, 3]`."""
        z = latents.float().unsqueeze(0) * self.std + self.mean
        video = self.vae.decode(z.to(self.device, self.vae.dtype), return_dict=False)[0].float().cpu()
        video = ((video[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return video.permute(1, 2, 3, 0).numpy()

    def vace_control(self, pose_frames: np.ndarray, reference: torch.Tensor | None = None) -> torch.Tensor:
        """The VACE context of a pose video, exactly as WanVACEPipeline builds it for a control video
        with mask 1 everywhere: ``[VAE(zeros) | VAE(pose) | 64 mask channels of ones]``.

        `reference` (normalized latents `[C, 1, h, w]` of the reference image) is prepended as one
        frame ``[reference | zeros | zero mask]``. Returns `[2C + 64, F (+1), h, w]`.
        """
        pixels = self.to_pixels(pose_frames)
        T, H, W = pixels.shape[2:]
        key = (T, H, W)
        if key not in self._zero_cache:  # inactive part of a full mask: the same for every clip
            self._zero_cache[key] = self.encode(torch.zeros_like(pixels))
        inactive, reactive = self._zero_cache[key], self.encode(pixels)
        F, h, w = reactive.shape[1:]
        mask = torch.ones(64, F, h, w)  # 8x8 pixel mask unfolded on channels, 4x in time: all ones
        control = torch.cat([inactive, reactive, mask], dim=0)
        if reference is not None:
            ref = torch.cat([reference, torch.zeros_like(reference), torch.zeros(64, 1, h, w)], dim=0)
            control = torch.cat([ref, control], dim=1)
        return control


# ---------------------------------------------------------------------------------------- text

def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()  # WanPipeline's whitespace_clean (ftfy left out)


class PromptEncoder:
    """umT5 (or T5) prompt embeddings as WanPipeline computes them: tokens up to `max_length`,
    the encoder's last hidden state over the real tokens, zero-padded to `max_length`."""

    def __init__(self, path, *, max_length: int = 512, dtype=torch.float32, device="cpu"):
        import transformers

        path = Path(path)
        if not path.exists():
            raise ValueError(f"--text-encoder {str(path)!r} does not exist")
        sub = _subfolder(path, "text_encoder", "--text-encoder")
        tok_dir = path / "tokenizer" if (path / "tokenizer").is_dir() else path / (sub or "")
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
        cfg = transformers.AutoConfig.from_pretrained(path / (sub or ""), local_files_only=True)
        cls = transformers.UMT5EncoderModel if cfg.model_type == "umt5" else transformers.T5EncoderModel
        self.model = cls.from_pretrained(path / (sub or ""), torch_dtype=dtype, local_files_only=True).to(device).eval()
        self.max_length = max_length
        self._cache = {}

    @torch.no_grad()
    def __call__(self, prompt: str) -> torch.Tensor:
        prompt = _clean(prompt)
        if prompt not in self._cache:
            tok = self.tokenizer([prompt], padding="max_length", max_length=self.max_length, truncation=True,
                                 add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
            dev = self.model.device
            emb = self.model(tok.input_ids.to(dev), tok.attention_mask.to(dev)).last_hidden_state[0].float().cpu()
            n = int(tok.attention_mask.gt(0).sum())
            emb[n:] = 0  # WanPipeline keeps the real tokens and pads with zeros
            self._cache[prompt] = emb
        return self._cache[prompt]


def load_text_embedding(path) -> torch.Tensor:
    """A cached prompt embedding `[L, D]` (`.safetensors` with one tensor or `text_emb`, `.pt`, `.npy`)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--text-emb {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        d = load_file(str(path))
        if "text_emb" not in d and len(d) != 1:
            raise ValueError(f"--text-emb {str(path)!r} must hold 'text_emb' or a single tensor, has {sorted(d)}")
        t = d.get("text_emb", next(iter(d.values())))
    elif path.suffix == ".npy":
        t = torch.from_numpy(np.load(path))
    else:
        t = torch.load(path, map_location="cpu", weights_only=True)
    t = t.float()
    if t.dim() == 3 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 2:
        raise ValueError(f"--text-emb {str(path)!r} must be [L, D] (or [1, L, D]), got {list(t.shape)}")
    return t
