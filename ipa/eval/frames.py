"""Frame metrics against ground truth: PSNR, SSIM, LPIPS.

Variants (stated in every report, since published numbers differ on them):

- **PSNR**: per frame, `10 * log10(255^2 / MSE)` with the MSE over all pixels and the three RGB
  channels, computed in float64 from the uint8 values (no uint8 subtraction, hence no wrap-around:
  the DisCo code base's old bug), data range 255; a video's PSNR is the mean of its per-frame
  values. Identical frames have MSE 0 and PSNR `inf`; the mean is then `inf` too (JSON reports
  write non-finite numbers as the strings "inf" / "nan").
- **SSIM**: scikit-image's `structural_similarity` with the settings of Wang et al. (2004):
  11x11 Gaussian window with sigma 1.5 (`gaussian_weights=True, use_sample_covariance=False`),
  K1 = 0.01, K2 = 0.03, data range 255, computed per RGB channel and averaged; per frame, then the
  mean over frames.
- **LPIPS**: through the `lpips` package (Zhang et al. 2018) or a TorchScript export of it, with
  user-supplied weights (see `LPIPS`); inputs scaled to [-1, 1]; per frame, then averaged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PSNR_VARIANT = "per-frame PSNR over RGB, float64 from uint8 (no wrap-around), data range 255, mean over frames; identical frames -> inf"
SSIM_VARIANT = ("scikit-image structural_similarity, Gaussian window sigma 1.5 (11x11), K1=0.01, K2=0.03, "
                "population covariance, data range 255, per RGB channel averaged, mean over frames")


def _pair(generated, reference, names=("generated", "reference")) -> tuple[np.ndarray, np.ndarray]:
    g, r = np.asarray(generated), np.asarray(reference)
    for a, name in ((g, names[0]), (r, names[1])):
        if a.ndim not in (3, 4) or a.shape[-1] != 3:
            raise ValueError(f"{name}: expected RGB frames [H, W, 3] or [T, H, W, 3], got shape {list(a.shape)}")
        if not (a.dtype == np.uint8 or np.issubdtype(a.dtype, np.floating)):
            raise ValueError(f"{name}: expected uint8 (or float in [0, 255]) frames, got {a.dtype}")
    if g.ndim == 3:
        g = g[None]
    if r.ndim == 3:
        r = r[None]
    if len(g) != len(r):
        raise ValueError(f"{names[0]}: {len(g)} frames but {names[1]} has {len(r)}; frame counts must match "
                         "(choose frames with the protocol's start/stride/max_frames)")
    if g.shape[1:] != r.shape[1:]:
        raise ValueError(f"{names[0]}: frame size {list(g.shape[1:3])} differs from {names[1]}'s "
                         f"{list(r.shape[1:3])} (set the protocol's resolution to resize both)")
    return g, r


def psnr(generated, reference, data_range: float = 255.0) -> np.ndarray:
    """Per-frame PSNR in dB, float64 `[T]` (inf where the frames are identical)."""
    g, r = _pair(generated, reference)
    diff = g.astype(np.float64) - r.astype(np.float64)
    mse = np.mean(diff * diff, axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(data_range**2 / mse)


def ssim(generated, reference, data_range: float = 255.0) -> np.ndarray:
    """Per-frame SSIM, float64 `[T]` (see the module docstring for the variant)."""
    from skimage.metrics import structural_similarity

    g, r = _pair(generated, reference)
    if min(g.shape[1:3]) < 11:
        raise ValueError(f"generated: frames of {list(g.shape[1:3])} are smaller than SSIM's 11x11 window")
    return np.array([
        structural_similarity(a.astype(np.float64), b.astype(np.float64), data_range=data_range,
                              channel_axis=-1, gaussian_weights=True, sigma=1.5,
                              use_sample_covariance=False)
        for a, b in zip(g, r)
    ], dtype=np.float64)


def default_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_tensor(frames: np.ndarray, value_range=(-1.0, 1.0), device=None):
    """uint8 `[T, H, W, 3]` -> float32 `[T, 3, H, W]` scaled linearly from [0, 255] to value_range."""
    import torch

    lo, hi = value_range
    x = torch.from_numpy(np.ascontiguousarray(frames)).to(device=device)
    x = x.permute(0, 3, 1, 2).float()
    return x * ((hi - lo) / 255.0) + lo


def load_module(path, device=None):
    """A model saved as TorchScript (`torch.jit.save`) or as a `torch.export` program (`.pt2`,
    `torch.export.save`), on `device`; None when the file is neither."""
    import logging

    import torch

    path = str(path)
    if not path.endswith(".pt2"):
        try:
            return torch.jit.load(path, map_location=device)
        except RuntimeError:
            pass
    level = logging.getLogger("torch.export").level
    logging.getLogger("torch.export").setLevel(logging.ERROR)  # its loader logs a traceback on failure
    try:
        return torch.export.load(path).module().to(device)
    except Exception:
        return None
    finally:
        logging.getLogger("torch.export").setLevel(level)


def input_dtype(model):
    """The float dtype a loaded model computes in: that of most of its parameter elements (float32
    for a plain callable). A half-precision export gets half inputs, not the float32 its
    convolutions would refuse."""
    import torch

    counts = {}
    for p in getattr(model, "parameters", lambda: [])():
        if p.is_floating_point():
            counts[p.dtype] = counts.get(p.dtype, 0) + p.numel()
    return max(counts, key=counts.get) if counts else torch.float32


def _eval_mode(model):
    try:
        model.eval()
    except (NotImplementedError, RuntimeError):  # exported programs refuse train()/eval()
        pass
    return model


class LPIPS:
    """LPIPS distance with weights from a local path (nothing downloaded).

    `weights` is either

    - a **TorchScript** file (`torch.jit.save`) or a `torch.export` program (`.pt2`) of a module `f(x, y) -> distances` taking two
      float `[N, 3, H, W]` batches in [-1, 1] and returning `[N]` (or `[N, 1, 1, 1]`) distances.
      Make one where the `lpips` package works, e.g.
      `torch.jit.trace(lpips.LPIPS(net="alex"), (x, y)).save("lpips_alex.pt")`; or
    - a **state dict** (`torch.save(lpips.LPIPS(net=...).state_dict(), path)`, backbone and linear
      heads) loaded into `lpips.LPIPS(net=net, pretrained=False, pnet_rand=True)`, which builds
      the network without downloading backbone weights. This needs the `lpips` package and a
      torchvision that imports beside the installed torch.

    Call with uint8 `[T, H, W, 3]` generated and reference frames; returns per-frame float64 `[T]`.
    """

    def __init__(self, weights, net: str = "alex", device=None, batch_size: int = 16):
        import torch

        path = Path(weights)
        if not path.is_file():
            raise ValueError(f"lpips_weights: {str(path)!r} does not exist")
        self.device = torch.device(device) if device is not None else default_device()
        self.batch_size = int(batch_size)
        self.model = load_module(path, self.device)
        self.kind = "torchscript / torch.export"
        if self.model is None:
            self.model = self._lpips_package(path, net)
            self.kind = f"lpips package ({net})"
        _eval_mode(self.model)
        self.dtype = input_dtype(self.model)

    def _lpips_package(self, path, net):
        import torch

        try:
            import lpips
        except Exception as e:  # ImportError, or torchvision failing to load its ops
            raise ValueError(
                f"lpips_weights: {str(path)!r} is not TorchScript or torch.export, and loading it as an lpips state dict "
                f"needs the `lpips` package with a working torchvision ({type(e).__name__}: {e}). Export "
                "a TorchScript LPIPS where lpips works: torch.jit.trace(lpips.LPIPS(net='alex'), (x, y)).save(path)"
            ) from e
        model = lpips.LPIPS(net=net, pretrained=False, pnet_rand=True, verbose=False)
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
        return model.to(self.device)

    def __call__(self, generated, reference) -> np.ndarray:
        import torch

        g, r = _pair(generated, reference)
        out = []
        with torch.no_grad():
            for i in range(0, len(g), self.batch_size):
                x = to_tensor(g[i : i + self.batch_size], device=self.device).to(self.dtype)
                y = to_tensor(r[i : i + self.batch_size], device=self.device).to(self.dtype)
                d = self.model(x, y)
                out.append(d.reshape(len(x), -1).mean(1).double().cpu().numpy())
        return np.concatenate(out)
