"""Distribution metrics: FID (frames), FID-VID and FVD (clips), with pluggable feature extractors.

All three are the Fréchet distance between Gaussians fitted to features of generated and of
reference samples:

    FD = |mu_g - mu_r|^2 + Tr(S_g + S_r - 2 (S_g S_r)^(1/2))

They differ only in the extractor and the sample: FID uses an image network (Inception) on single
frames; FID-VID (as in DisCo / MagicAnimate reports) a 3D-ResNet on clips; FVD an I3D on clips.
Weights are never downloaded: an extractor is a model file from a user path (TorchScript, or a
`torch.export` program saved as `.pt2`) or any Python callable, described by a spec (a protocol's
`extractors` entry):

```yaml
extractors:
  fvd:   {path: /models/i3d_torchscript.pt, kind: video, size: [224, 224], value_range: [-1, 1],
          kwargs: {rescale: false, resize: false, return_features: true}}
  fid:   {path: /models/inception.pt, kind: frame, size: [299, 299], value_range: [0, 255]}
```

`kind: frame` modules get float `[N, 3, H, W]`; `kind: video` modules get `[N, 3, T, H, W]` clips of
`clip_len` consecutive (protocol-sampled) frames; both return `[N, D]` features (other trailing
shapes are flattened). Frames are resized to `size` (bilinear) and scaled to `value_range`.
Clips: non-overlapping windows of `clip_len` frames; a video shorter than `clip_len` gives one
clip padded by repeating its last frame, and a tail shorter than `clip_len` is dropped.
Note that FD estimates are biased with few samples: compare runs at the same sample count.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class FeatureStats:
    """Mean and covariance of features `[N, D]` (float64), plus the sample count."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int

    @classmethod
    def from_features(cls, features) -> "FeatureStats":
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2 or len(f) < 2:
            raise ValueError(f"features: expected [N, D] with N >= 2 samples, got shape {list(f.shape)}")
        return cls(mu=f.mean(0), sigma=np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1]), n=len(f))

    def save(self, path) -> None:
        np.savez(path, mu=self.mu, sigma=self.sigma, n=self.n)

    @classmethod
    def load(cls, path) -> "FeatureStats":
        if not Path(path).is_file():
            raise ValueError(f"stats: {str(path)!r} does not exist")
        d = np.load(path)
        return cls(mu=d["mu"], sigma=d["sigma"], n=int(d["n"]))


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    The matrix square root comes from `scipy.linalg.sqrtm`; when the product is near singular (few
    samples), `eps` is added to both diagonals first, as pytorch-fid does. Tiny imaginary parts
    from numerical error are dropped; large ones are an error.
    """
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"sigma1/sigma2: expected means [{d}] and covariances [{d}, {d}], got "
                         f"mu2 {list(mu2.shape)}, sigma1 {list(s1.shape)}, sigma2 {list(s2.shape)}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(d) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"frechet_distance: sqrtm has imaginary diagonal up to {np.abs(covmean.imag).max():g}")
        covmean = covmean.real
    fd = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))
    return max(fd, 0.0)  # non-negative in exact arithmetic; rounding can leave -1e-16


def fd_from_features(features_generated, features_reference) -> float:
    a = FeatureStats.from_features(features_generated)
    b = FeatureStats.from_features(features_reference)
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def make_clips(frames: np.ndarray, clip_len: int) -> np.ndarray:
    """Non-overlapping `[N, clip_len, H, W, 3]` clips (see the module docstring for short videos)."""
    t = len(frames)
    if t < clip_len:
        pad = np.repeat(frames[-1:], clip_len - t, axis=0)
        return np.concatenate([frames, pad])[None]
    n = t // clip_len
    return frames[: n * clip_len].reshape(n, clip_len, *frames.shape[1:])


class FeatureExtractor:
    """Features `[N, D]` from uint8 frames (`kind="frame"`) or clips (`kind="video"`).

    `model`: a TorchScript path or any callable on float tensors (see the module docstring).
    """

    def __init__(self, model, kind: str = "frame", size=None, value_range=(-1.0, 1.0), kwargs=None,
                 clip_len: int = 16, batch_size: int = 8, device=None, name: str = "extractor"):
        import torch

        from .frames import _eval_mode, default_device, input_dtype, load_module

        if kind not in ("frame", "video"):
            raise ValueError(f"{name}.kind: expected 'frame' or 'video', got {kind!r}")
        if size is not None and (len(size) != 2 or min(size) <= 0):
            raise ValueError(f"{name}.size: expected [H, W], got {size!r}")
        if len(value_range) != 2:
            raise ValueError(f"{name}.value_range: expected [lo, hi], got {value_range!r}")
        self.device = torch.device(device) if device is not None else default_device()
        if isinstance(model, (str, Path)):
            path = Path(model)
            if not path.is_file():
                raise ValueError(f"{name}.path: {str(path)!r} does not exist")
            model = load_module(path, self.device)
            if model is None:
                raise ValueError(f"{name}.path: {str(path)!r} is neither TorchScript nor a torch.export .pt2 file")
        elif isinstance(model, torch.nn.Module):
            model = model.to(self.device)
        if not callable(model):
            raise ValueError(f"{name}.path: expected a TorchScript path or a callable, got {type(model).__name__}")
        if hasattr(model, "eval"):
            _eval_mode(model)
        self.model, self.kind, self.name = model, kind, name
        self.dtype = input_dtype(model)
        self.size = tuple(size) if size is not None else None
        self.value_range = tuple(float(v) for v in value_range)
        self.kwargs = dict(kwargs or {})
        self.clip_len, self.batch_size = int(clip_len), int(batch_size)

    def _prep(self, frames: np.ndarray):
        import torch.nn.functional as F

        from .frames import to_tensor

        x = to_tensor(frames, self.value_range, self.device)  # [N, 3, H, W]
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return x.to(self.dtype)  # resized in float32, then the model's dtype

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """Features of one video's frames `[T, H, W, 3]`: `[T, D]` (frame) or `[clips, D]` (video)."""
        import torch

        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames: expected [T, H, W, 3], got {list(frames.shape)}")
        out = []
        with torch.no_grad():
            if self.kind == "frame":
                for i in range(0, len(frames), self.batch_size):
                    out.append(self._run(self._prep(frames[i : i + self.batch_size])))
            else:
                clips = make_clips(frames, self.clip_len)
                for c in clips:
                    x = self._prep(c).permute(1, 0, 2, 3)[None]  # [1, 3, T, H, W]
                    out.append(self._run(x))
        return np.concatenate(out)

    def _run(self, x) -> np.ndarray:
        y = self.model(x, **self.kwargs)
        if isinstance(y, (tuple, list)):
            y = y[0]
        return y.reshape(len(x), -1).double().cpu().numpy()


def load_extractor(name: str, spec, clip_len: int = 16, device=None) -> FeatureExtractor:
    """A `FeatureExtractor` from a protocol spec: a path or a mapping with `path` and optional `kind`
    (default: frame for `fid`, video for any other name), `size`, `value_range`, `kwargs`,
    `clip_len`, `batch_size`."""
    if isinstance(spec, (str, Path)):
        spec = {"path": str(spec)}
    if not isinstance(spec, dict) or "path" not in spec:
        raise ValueError(f"extractors.{name}: expected a path or a mapping with 'path', got {spec!r}")
    known = {"path", "kind", "size", "value_range", "kwargs", "clip_len", "batch_size"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ValueError(f"extractors.{name}: unknown key(s) {unknown}; known: {sorted(known)}")
    default_kind = "frame" if name.lower() == "fid" else "video"
    return FeatureExtractor(spec["path"], kind=spec.get("kind", default_kind), size=spec.get("size"),
                            value_range=spec.get("value_range", (-1.0, 1.0)), kwargs=spec.get("kwargs"),
                            clip_len=spec.get("clip_len", clip_len), batch_size=spec.get("batch_size", 8),
                            device=device, name=f"extractors.{name}")
