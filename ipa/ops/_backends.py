"""Backend choice and launchers for the HALO error kernels.

Backends: "triton" (CUDA tensors; CPU tensors too when TRITON_INTERPRET=1 was set before import),
"cpp" (CPU tensors, `ipa._C`), "torch" (plain PyTorch, any device). "auto" picks Triton on CUDA,
C++ on CPU, and falls back to "torch" with a one-time warning when the preferred one is missing.
Launchers take validated, contiguous tensors: pred/ref/target [B, C, F, H, W], mask [B, F-skip, H, W].
"""

import os
import warnings

import torch

from . import reference

BACKENDS = ("auto", "triton", "cpp", "torch")

# Codes shared with csrc/halo.cpp (enum DType).
_CPP_DTYPE_CODES = {
    torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3,
    torch.uint8: 4, torch.bool: 4,
}

_status = {}  # name -> module or None (import error kept in _import_errors)
_import_errors = {}
_warned = set()


# torch's CPU capability (ATEN_CPU_CAPABILITY overrides it) -> ipa._C's variant of the same level.
_TORCH_CAPABILITY_TO_ISA = {"AVX512": "avx512", "AVX2": "avx2", "DEFAULT": "baseline"}


def follow_torch_isa(cpp):
    """Run a portable `ipa._C` (one with several instruction-set variants) at the level torch's own
    CPU kernels use, so ATEN_CPU_CAPABILITY=avx2 keeps both off AVX-512. A native build has one
    variant and keeps it."""
    want = _TORCH_CAPABILITY_TO_ISA.get(torch.backends.cpu.get_cpu_capability())
    if want in cpp.isas():
        cpp.set_isa(want)
    return cpp.isa()


def _load(name):
    if name not in _status:
        try:
            if name == "cpp":
                from ipa import _C as mod
                follow_torch_isa(mod)
            else:
                from ipa.kernels import halo as mod
            _status[name] = mod
        except Exception as e:  # ImportError, or triton failing to find a driver
            _status[name] = None
            _import_errors[name] = f"{type(e).__name__}: {e}"
    return _status[name]


def _triton_runs_on(device):
    if device.type == "cuda":
        return True
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


def available_backends(device="cpu"):
    """Backends that can run on `device` in this process, best first."""
    device = torch.device(device)
    names = []
    if _triton_runs_on(device) and _load("triton") is not None:
        names.append("triton")
    if device.type == "cpu" and _load("cpp") is not None:
        names.append("cpp")
    names.append("torch")
    return names


def check_backend_name(backend):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def resolve_backend(backend, device):
    """Turn a user's `backend` argument into the one that will run, or raise a clear error."""
    check_backend_name(backend)
    device_type = device.type if isinstance(device, torch.device) else torch.device(device).type
    return _resolve(backend, device_type)


def _assume_constant_result(fn):
    """`torch.compiler.assume_constant_result` without its import of torch._dynamo (2 s, in every
    process that imports ipa.ops): it only sets this attribute (PyTorch 2.1 to 2.13), which Dynamo
    reads when it traces a call. test_first_call_inside_torch_compile_dynamic fails if it stops."""
    fn._dynamo_marked_constant = True
    return fn


# Host-side setup (loading ipa._C or the Triton module, reading torch's CPU capability) that
# torch.compile must not trace: under compilation it runs once, eagerly, and its answer is a
# constant of the graph, so the first call of an op may come inside torch.compile(fullgraph=True).
@_assume_constant_result
def _resolve(backend, device):
    if backend == "torch":
        return backend
    if backend == "auto":
        preferred = "triton" if device == "cuda" else "cpp" if device == "cpu" else None
        if preferred is None:
            return "torch"
        if preferred in available_backends(device):
            return preferred
        if preferred not in _warned:
            _warned.add(preferred)
            warnings.warn(f"ipa.ops: the {preferred} backend is unavailable "
                          f"({_import_errors.get(preferred, 'not importable')}); using the slower "
                          f"'torch' backend", RuntimeWarning, stacklevel=4)
        return "torch"
    if backend not in available_backends(device):
        why = {
            "triton": "needs CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 set before "
                      "ipa.kernels is imported",
            "cpp": "needs CPU tensors and the compiled extension ipa._C (run `make install`)",
        }[backend]
        detail = _import_errors.get(backend)
        raise ValueError(f"backend={backend!r} cannot run on {device} here: it {why}"
                         + (f" [{detail}]" if detail else "")
                         + f"; available: {available_backends(device)}")
    return backend


def acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _ptr(t):
    return 0 if t is None else t.data_ptr()


def _mask_for_kernel(mask):
    # bool and uint8 have the same layout; kernels read both as uint8.
    return mask.view(torch.uint8) if mask is not None and mask.dtype == torch.bool else mask


def forward(backend, pred, ref, target, mask, hand_weight, skip_frames):
    """(err_pred [B], err_ref [B] or None), accumulated and returned in acc_dtype(pred.dtype)."""
    if backend == "torch":
        acc = acc_dtype(pred.dtype)
        kw = dict(hand_weight=hand_weight, skip_frames=skip_frames)
        err = reference.halo_error(pred.to(acc), target.to(acc), mask, **kw)
        err_ref = reference.halo_error(ref.to(acc), target.to(acc), mask, **kw) if ref is not None else None
        return err, err_ref
    mask = _mask_for_kernel(mask)
    if backend == "triton":
        return _load("triton").halo_forward(pred, ref, target, mask, hand_weight, skip_frames)
    B, C, F, H, W = pred.shape
    # Two buffers, not two views of one: custom-op outputs must not alias each other.
    out, out_ref = torch.empty(B, dtype=torch.float64), torch.empty(B, dtype=torch.float64)
    _load("cpp").halo_forward(
        _ptr(pred), _ptr(ref), _ptr(target), _ptr(mask), out.data_ptr(), out_ref.data_ptr(),
        B, C, F, H * W, skip_frames, float(hand_weight), _CPP_DTYPE_CODES[pred.dtype],
        _CPP_DTYPE_CODES[mask.dtype] if mask is not None else 0, torch.get_num_threads(),
    )
    acc = acc_dtype(pred.dtype)
    return out.to(acc), (out_ref.to(acc) if ref is not None else None)


OBJECTIVE_CODES = {"ipa": 0, "sft": 1}  # csrc/halo.cpp (enum Objective)


def loss_forward(backend, pred, ref, target, mask, timesteps, ref_error, objective, beta, hand_weight,
                 skip_frames, n_stats):
    """(loss, stats [n_stats], coef [B]) in acc_dtype(pred.dtype), errors and loss head fused: one
    C++ call, or two Triton launches. None where the backend has no fused head (the caller then
    runs `forward` and the head in torch)."""
    if backend == "triton":
        return _load("triton").halo_loss_forward(pred, ref, target, _mask_for_kernel(mask), timesteps,
                                                 ref_error, objective, beta, hand_weight, skip_frames, n_stats)
    if backend != "cpp":
        return None
    mask = _mask_for_kernel(mask)
    B, C, F, H, W = pred.shape
    acc = acc_dtype(pred.dtype)
    t64 = timesteps.to(torch.float64) if timesteps is not None else None  # contiguous: the op made them so
    ref64 = ref_error.to(torch.float64) if ref_error is not None else None
    loss, stats, coef = torch.empty((), dtype=acc), torch.empty(n_stats, dtype=acc), torch.empty(B, dtype=acc)
    _load("cpp").halo_loss_forward(
        _ptr(pred), _ptr(ref), _ptr(target), _ptr(mask), _ptr(t64), _ptr(ref64),
        loss.data_ptr(), stats.data_ptr(), coef.data_ptr(), B, C, F, H * W, skip_frames,
        float(hand_weight), float(beta), OBJECTIVE_CODES[objective], _CPP_DTYPE_CODES[pred.dtype],
        _CPP_DTYPE_CODES[mask.dtype] if mask is not None else 0, _CPP_DTYPE_CODES[acc],
        torch.get_num_threads(),
    )
    return loss, stats, coef


def backward(backend, grad_err, pred, target, mask, hand_weight, skip_frames, grad_scale=None):
    """d(sum_b grad_scale * grad_err[b] * err[b]) / d pred, in pred's dtype (grad_scale: 0-dim or None)."""
    B, C, F, H, W = pred.shape
    if backend == "triton":
        return _load("triton").halo_backward(grad_err, pred, target, _mask_for_kernel(mask), hand_weight,
                                             skip_frames, grad_scale)
    if grad_scale is not None:
        grad_err = grad_err * grad_scale
    if backend == "torch":
        acc = acc_dtype(pred.dtype)
        g = grad_err.to(acc).view(B, 1, 1, 1, 1) * (2.0 / (C * F * H * W))
        d = pred.to(acc) - target.to(acc)
        if mask is not None:
            d = d * reference.halo_weight(mask, F, hand_weight=hand_weight, skip_frames=skip_frames, dtype=acc)
        return (g * d).to(pred.dtype)
    mask = _mask_for_kernel(mask)
    grad = torch.empty_like(pred)
    g64 = grad_err.to(torch.float64).contiguous()
    _load("cpp").halo_backward(
        g64.data_ptr(), _ptr(pred), _ptr(target), _ptr(mask), grad.data_ptr(),
        B, C, F, H * W, skip_frames, float(hand_weight), _CPP_DTYPE_CODES[pred.dtype],
        _CPP_DTYPE_CODES[mask.dtype] if mask is not None else 0, torch.get_num_threads(),
    )
    return grad
