"""HALO-weighted per-sample squared error: the fused op every loss in `ipa.ops` is built on.

    err[b] = mean over (C, F, H, W) of w * (pred - target)^2,
    w = 1 on the first `skip_frames` frames, 1 + (hand_weight - 1) * clamp(mask, 0, 1) after them.

Registered as the `torch.library` custom ops `ipa::halo_error_fwd` (one pass over pred, the
optional frozen prediction `ref`, target and mask, producing both per-sample errors) and
`ipa::halo_error_bwd` (one pass writing d/d pred), with fake kernels and autograd, so that
`torch.compile(fullgraph=True)` traces them without a graph break.
"""

from typing import Optional

import torch
from torch import Tensor

from . import _backends, _checks


@torch.library.custom_op("ipa::halo_error_fwd", mutates_args=())
def _halo_error_fwd(pred: Tensor, ref: Optional[Tensor], target: Tensor, hand_mask: Optional[Tensor],
                    hand_weight: float, skip_frames: int, backend: str) -> tuple[Tensor, Tensor]:
    pred, target = pred.contiguous(), target.contiguous()
    ref = ref.contiguous() if ref is not None else None
    hand_mask = hand_mask.contiguous() if hand_mask is not None else None
    err, err_ref = _backends.forward(backend, pred, ref, target, hand_mask, hand_weight, skip_frames)
    if err_ref is None:  # custom ops cannot return None: an empty tensor stands for "no reference"
        err_ref = err.new_empty(0)
    return err, err_ref


@_halo_error_fwd.register_fake
def _(pred, ref, target, hand_mask, hand_weight, skip_frames, backend):
    acc = _backends.acc_dtype(pred.dtype)
    B = pred.shape[0]
    return pred.new_empty(B, dtype=acc), pred.new_empty(B if ref is not None else 0, dtype=acc)


@torch.library.custom_op("ipa::halo_error_bwd", mutates_args=())
def _halo_error_bwd(grad_err: Tensor, pred: Tensor, target: Tensor, hand_mask: Optional[Tensor],
                    hand_weight: float, skip_frames: int, backend: str,
                    grad_scale: Optional[Tensor] = None) -> Tensor:
    # grad_scale (0-dim) multiplies grad_err: a loss passes its upstream gradient here, so the
    # Triton backward applies it per program instead of a launch of `grad_loss * coef` of its own.
    pred, target = pred.contiguous(), target.contiguous()
    hand_mask = hand_mask.contiguous() if hand_mask is not None else None
    return _backends.backward(backend, grad_err.contiguous(), pred, target, hand_mask, hand_weight, skip_frames,
                              grad_scale)


@_halo_error_bwd.register_fake
def _(grad_err, pred, target, hand_mask, hand_weight, skip_frames, backend, grad_scale=None):
    return torch.empty_like(pred, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    pred, ref, target, hand_mask, hand_weight, skip_frames, backend = inputs
    # err_ref depends on target only (the frozen prediction is a constant): it is differentiable
    # when target needs a gradient, and only then is `ref` kept for the backward.
    ref_to_target = ref is not None and ctx.needs_input_grad[2]
    if not ref_to_target:
        ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(pred, target, hand_mask, ref if ref_to_target else None)
    ctx.hand_weight, ctx.skip_frames, ctx.backend = hand_weight, skip_frames, backend


def target_grad(ctx, grad_pred, grad_ref_error, ref, target, hand_mask):
    """d/d target: err and err_ref are both sums of w * (x - target)^2, so each contributes minus
    its d/d x; the first is `grad_pred`, the second one more backward kernel over `ref`."""
    grad = -grad_pred if grad_pred is not None else None
    if ref is not None and grad_ref_error is not None:
        from_ref = _halo_error_bwd(grad_ref_error, ref, target, hand_mask, ctx.hand_weight,
                                   ctx.skip_frames, ctx.backend)
        grad = -from_ref if grad is None else grad - from_ref
    return grad


def _backward(ctx, grad_err, grad_err_ref):
    pred, target, hand_mask, ref = ctx.saved_tensors
    grad_pred = None
    if grad_err is not None:  # None: no gradient reached err (gradcheck probes this way)
        grad_pred = _halo_error_bwd(grad_err, pred, target, hand_mask, ctx.hand_weight,
                                    ctx.skip_frames, ctx.backend)
    grad_target = None
    if ctx.needs_input_grad[2]:
        grad_target = target_grad(ctx, grad_pred, grad_err_ref, ref, target, hand_mask)
    if not ctx.needs_input_grad[0]:
        grad_pred = None
    return grad_pred, None, grad_target, None, None, None, None


_halo_error_fwd.register_autograd(_backward, setup_context=_setup_context)


def prepare_inputs(pred, target, hand_mask, ref_pred, hand_weight, skip_frames, backend,
                   pred_name="model_pred", arg_suffix=""):
    """Validate what every HALO op takes; returns what the custom ops want: (target and ref_pred in
    pred's dtype, ref_pred detached, the mask detached as [B, F - skip, H, W], hand_weight as a
    float, skip_frames as an int, the backend). Errors name `pred_name` and, for the other
    tensors, their argument with `arg_suffix` (DPO's "_w" / "_l")."""
    target_name, mask_name, ref_name = (n + arg_suffix for n in ("target", "hand_mask", "ref_pred"))
    _checks.check_prediction(pred_name, pred)
    _checks.check_like(target_name, target, pred_name, pred)
    if ref_pred is not None:
        _checks.check_like(ref_name, ref_pred, pred_name, pred)
        ref_pred = ref_pred.detach().to(pred.dtype)
    hand_weight = _checks.as_number("hand_weight", hand_weight)
    skip_frames = _checks.as_skip_frames(skip_frames, pred.shape[2])
    hand_mask = _checks.normalize_mask(mask_name, hand_mask, pred, skip_frames)
    backend = _backends.resolve_backend(backend, pred.device)
    return target.to(pred.dtype), ref_pred, hand_mask, hand_weight, skip_frames, backend


def halo_errors(pred, target, hand_mask=None, *, ref_pred=None, hand_weight=10.0, skip_frames=1,
                backend="auto", pred_name="model_pred", arg_suffix=""):
    """Per-sample HALO errors of `pred` and, in the same pass, of the frozen `ref_pred`.

    Returns `(err [B], err_ref [B] or None)`, float32 (float64 for float64 inputs). `ref_pred` and
    the mask are constants: `err` is differentiable in `pred` and `target`, `err_ref` in `target`
    only (it carries a gradient only when `target` needs one). `target` and `ref_pred` are cast to
    pred's dtype if they differ. `pred_name` / `arg_suffix`: argument names for error messages.
    """
    target, ref_pred, hand_mask, hand_weight, skip_frames, backend = prepare_inputs(
        pred, target, hand_mask, ref_pred, hand_weight, skip_frames, backend, pred_name, arg_suffix)
    err, err_ref = _halo_error_fwd(pred, ref_pred, target, hand_mask, hand_weight, skip_frames, backend)
    return err, (err_ref if ref_pred is not None else None)


def halo_error(pred, target, hand_mask=None, *, hand_weight=10.0, skip_frames=1, backend="auto"):
    """Per-sample `mean over (C, F, H, W) of w * (pred - target)^2`, shape [B], float32.

    Args:
        pred, target: latents [B, C, F, H, W] (any float dtype; target is cast to pred's).
        hand_mask: hand mask on the latent grid, [B, F - skip_frames, H, W] or
            [B, 1, F - skip_frames, H, W], float (clamped to [0, 1]), bool or uint8; None gives
            plain per-sample MSE.
        hand_weight: weight of hand pixels (lambda, 10 in the paper); background weighs 1.
        skip_frames: leading latent frames that are never hand-weighted (Wan's first frame).
        backend: "auto", "triton", "cpp" or "torch" (see `ipa.ops.available_backends`).
    Differentiable in `pred` (and `target`). float64 inputs give a float64 result.
    """
    return halo_errors(pred, target, hand_mask, hand_weight=hand_weight, skip_frames=skip_frames,
                       backend=backend, pred_name="pred")[0]


def check_hyper_parameters(*, hand_weight, skip_frames, backend, beta=None):
    """What a loss module can check when built (F is known only at the call): a bad value fails
    at construction, not at the first step of a run."""
    _checks.as_number("hand_weight", hand_weight)
    _checks.as_skip_frames(skip_frames)
    if beta is not None:
        _checks.as_number("beta", beta, positive=True)
    _backends.check_backend_name(backend)


class HaloError(torch.nn.Module):
    """`halo_error` with its hyper-parameters held: `HaloError(hand_weight=10)(pred, target, mask)`."""

    def __init__(self, hand_weight=10.0, skip_frames=1, backend="auto"):
        super().__init__()
        check_hyper_parameters(hand_weight=hand_weight, skip_frames=skip_frames, backend=backend)
        self.hand_weight, self.skip_frames, self.backend = hand_weight, skip_frames, backend

    def forward(self, pred, target, hand_mask=None):
        return halo_error(pred, target, hand_mask, hand_weight=self.hand_weight,
                          skip_frames=self.skip_frames, backend=self.backend)

    def extra_repr(self):
        return f"hand_weight={self.hand_weight}, skip_frames={self.skip_frames}, backend={self.backend!r}"
