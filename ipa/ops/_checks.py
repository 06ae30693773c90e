"""Input validation for `ipa.ops`: every error names the argument and what was expected."""

import math
import numbers

import torch
from torch._subclasses.fake_tensor import FakeTensor  # loaded by torch itself; no public name

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MASK_DTYPES = FLOAT_DTYPES + (torch.bool, torch.uint8)


def _fail(msg):
    raise ValueError(msg)


def check_prediction(name, x):
    if not isinstance(x, torch.Tensor):
        _fail(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        _fail(f"{name} must be floating point (float16, bfloat16, float32 or float64), got {x.dtype}")
    if x.dim() != 5:
        _fail(f"{name} must be a latent tensor [B, C, F, H, W], got shape {tuple(x.shape)}")
    if 0 in x.shape:  # an empty batch or grid has no mean error: say so, not a NaN or a head error
        _fail(f"{name} must be non-empty in every dimension of [B, C, F, H, W], got shape {tuple(x.shape)}")


def check_like(name, x, ref_name, ref):
    """`x` must have exactly the shape and device of `ref` (a validated prediction)."""
    check_prediction(name, x)
    if x.shape != ref.shape:
        _fail(f"{name} must have the shape of {ref_name} {tuple(ref.shape)}, got {tuple(x.shape)}")
    check_device(name, x, ref_name, ref)


def check_device(name, x, ref_name, ref):
    if x.device != ref.device:
        _fail(f"{name} is on {x.device} but {ref_name} is on {ref.device}; put them on one device")


def as_number(name, x, *, positive=False):
    """A real hyper-parameter (Python or NumPy scalar; not a bool) as a finite float: >= 0, or
    > 0 with `positive`. Comparisons, not math.isfinite: torch.compile(dynamic=True) traces them
    (and NaN fails both)."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        _fail(f"{name} must be a real number, got {x!r}")
    try:
        value = float(x)
    except OverflowError:
        value = math.inf
    if not ((0 < value) if positive else (0 <= value)) or not value < math.inf:
        _fail(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {x!r}")
    return value


def as_skip_frames(skip_frames, num_frames=None):
    """`skip_frames` as an int in [0, F] (F unknown: >= 0); NumPy integers are taken, bools not."""
    if isinstance(skip_frames, bool) or not isinstance(skip_frames, numbers.Integral):
        _fail(f"skip_frames must be an int, got {skip_frames!r}")
    skip = int(skip_frames)
    if skip < 0 or (num_frames is not None and skip > num_frames):
        _fail(f"skip_frames must be an int in [0, F={num_frames}], got {skip_frames!r}" if num_frames is not None
              else f"skip_frames must be an int >= 0, got {skip_frames!r}")
    return skip


def normalize_mask(name, mask, pred, skip_frames):
    """Hand mask as a detached [B, F - skip_frames, H, W] on pred's device (a view, never a copy)."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        _fail(f"{name} must be a torch.Tensor or None, got {type(mask).__name__}")
    if mask.dtype not in MASK_DTYPES:
        _fail(f"{name} must be float, bool or uint8, got {mask.dtype}")
    B, _, F, H, W = pred.shape
    expected = (B, F - skip_frames, H, W)
    if mask.dim() == 5:
        if mask.shape[1] != 1:
            _fail(f"{name} with 5 dims must be [B, 1, F - skip_frames, H, W] = "
                  f"{(B, 1) + expected[1:]}, got {tuple(mask.shape)}")
        mask = mask.squeeze(1)
    if mask.dim() != 4:
        _fail(f"{name} must be [B, F - skip_frames, H, W] = {expected}, got shape {tuple(mask.shape)}")
    if mask.shape[0] != B:
        _fail(f"{name} batch must be {B} (as the predictions), got {mask.shape[0]}")
    if mask.shape[1] != F - skip_frames:
        _fail(f"{name} must have F - skip_frames = {F} - {skip_frames} = {F - skip_frames} frames, "
              f"got {mask.shape[1]} (shape {tuple(mask.shape)})")
    if tuple(mask.shape[2:]) != (H, W):
        _fail(f"{name} spatial size must be (H, W) = {(H, W)} of the latent grid, got {tuple(mask.shape[2:])}")
    check_device(name, mask, "model_pred", pred)
    return mask.detach()  # a weight, as ref_pred: no gradient (and no backward run for one)


def check_per_sample(name, x, batch, pred, *, unit_interval=False):
    """A float [B] tensor on pred's device; optionally with values in [0, 1]."""
    if not isinstance(x, torch.Tensor):
        _fail(f"{name} must be a torch.Tensor of shape ({batch},), got {type(x).__name__}")
    if x.shape != (batch,):
        _fail(f"{name} must have shape (B,) = ({batch},), got {tuple(x.shape)}")
    if not x.is_floating_point():
        _fail(f"{name} must be floating point, got {x.dtype}")
    check_device(name, x, "model_pred", pred)
    # Range check on CPU only: on CUDA it would cost a device sync per call. NaN passes (and
    # yields a NaN loss); it is skipped while compiling and on fake tensors (data-dependent).
    if (unit_interval and x.numel() and x.device.type == "cpu" and not torch.compiler.is_compiling()
            and not isinstance(x, FakeTensor)):
        lo, hi = (v.item() for v in torch.aminmax(x.detach()))  # one op: this runs every step
        if lo < 0 or hi > 1:
            _fail(f"{name} must be normalized to [0, 1] (s = timestep / 1000), got values in [{lo:.4g}, {hi:.4g}]")
    return x


def exactly_one(a_name, a, b_name, b):
    if (a is None) == (b is None):
        _fail(f"pass exactly one of {a_name} (the frozen model's prediction) or {b_name} "
              f"(precomputed per-sample reference error), got {'both' if a is not None else 'neither'}")
