"""One custom op for a whole per-sample loss on the HALO error: IPA and flow-matching SFT.

Both losses are a mean over samples of a head h(err_b) applied to per-sample errors, so

    dL / d pred = sum_b h'(err_b) * d err_b / d pred.

`ipa::halo_loss_fwd` runs the fused error kernel, evaluates the head on the B errors (inside the
C++ call on CPU, in the Triton fold kernel on CUDA, in torch for the torch backend) and returns
the loss, the metrics and coef[b] = h'(err_b); its backward is the one-pass error backward with
upstream `grad_loss * coef`. The autograd graph of a loss is thus two ops (one forward, one
backward kernel) instead of the error op plus a dozen small head ops: fewer launches on CUDA,
less dispatch on CPU, and `torch.compile` sees one opaque node.

IPA head: with c_b = beta/2 (1 - t_b)^2 and logit_b = c_b (err_ref_b - err_b),
    L = mean_b softplus(-logit_b),    h'(err_b) = c_b * sigmoid(-logit_b) / B   (> 0: lowering the
    policy error lowers the loss, most where the policy does not yet beat the reference).
SFT head: L = mean_b err_b, h' = 1 / B.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _backends
from .halo_error import _halo_error_bwd, target_grad

OBJECTIVES = ("ipa", "sft")
IPA_STATS = ("ipa_gap", "model_error", "reference_error", "implicit_accuracy", "logit")
SFT_STATS = ("model_error",)


def _ipa_head(err, err_ref, t, beta):
    c = beta / 2 * (1 - t) ** 2
    gap = err_ref - err
    logits = c * gap
    # softplus(-x) == -logsigmoid(x); softplus is a TensorIterator op that stays serial on B
    # elements, while log_sigmoid's CPU kernel always opens an OpenMP region (measured: up to
    # 0.5 ms per step waiting for a worker thread on a busy 2-core machine).
    loss = F.softplus(-logits).mean()
    coef = c * torch.sigmoid(-logits) / err.shape[0]
    stats = torch.stack([gap.mean(), err.mean(), err_ref.mean(), (gap > 0).to(err.dtype).mean(), logits.mean()])
    return loss, stats, coef


@torch.library.custom_op("ipa::halo_loss_fwd", mutates_args=())
def _halo_loss_fwd(pred: Tensor, ref: Optional[Tensor], target: Tensor, hand_mask: Optional[Tensor],
                   timesteps: Optional[Tensor], ref_error: Optional[Tensor], objective: str, beta: float,
                   hand_weight: float, skip_frames: int, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    pred, target = pred.contiguous(), target.contiguous()
    ref = ref.contiguous() if ref is not None else None
    hand_mask = hand_mask.contiguous() if hand_mask is not None else None
    # The kernels index these [B] vectors with unit stride (a strided or expanded one would be misread).
    timesteps = timesteps.contiguous() if timesteps is not None else None
    ref_error = ref_error.contiguous() if ref_error is not None else None
    n_stats = len(IPA_STATS if objective == "ipa" else SFT_STATS)
    fused = _backends.loss_forward(backend, pred, ref, target, hand_mask, timesteps, ref_error, objective,
                                   beta, hand_weight, skip_frames, n_stats)
    if fused is not None:  # the head inside the kernel call: no tiny torch ops (launches on CUDA)
        return fused
    err, err_ref = _backends.forward(backend, pred, ref, target, hand_mask, hand_weight, skip_frames)
    if objective == "sft":
        loss = err.mean()
        return loss, loss.reshape(1).clone(), torch.full_like(err, 1.0 / err.shape[0])
    if err_ref is None:
        err_ref = ref_error.to(err.dtype)
    return _ipa_head(err, err_ref, timesteps.to(err.dtype), beta)


@_halo_loss_fwd.register_fake
def _(pred, ref, target, hand_mask, timesteps, ref_error, objective, beta, hand_weight, skip_frames, backend):
    acc = _backends.acc_dtype(pred.dtype)
    n_stats = len(IPA_STATS if objective == "ipa" else SFT_STATS)
    return (pred.new_empty((), dtype=acc), pred.new_empty(n_stats, dtype=acc),
            pred.new_empty(pred.shape[0], dtype=acc))


def _setup_context(ctx, inputs, output):
    pred, ref, target, hand_mask, _t, _ref_err, objective, _beta, hand_weight, skip_frames, backend = inputs
    # Only the loss is differentiable: no zero gradients built for the metrics and coef.
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)
    # IPA on a reference prediction: the reference error depends on target too, so `ref` is kept for
    # the backward when target needs a gradient (only then: it is a full tensor).
    ref_to_target = ref is not None and objective == "ipa" and ctx.needs_input_grad[2]
    ctx.save_for_backward(pred, target, hand_mask, output[2], ref if ref_to_target else None)
    ctx.hand_weight, ctx.skip_frames, ctx.backend = hand_weight, skip_frames, backend


def _backward(ctx, grad_loss, _grad_stats, _grad_coef):
    # Only the loss is differentiable (metrics are reported detached); the reference prediction,
    # reference error and timesteps are constants of the objective.
    pred, target, hand_mask, coef, ref = ctx.saved_tensors
    if grad_loss is None:  # reached with no gradient for the loss (gradcheck probes this way)
        return (None,) * 11
    # dL/d err = grad_loss * coef, applied inside the backward kernel (one launch fewer per step)
    grad_pred = _halo_error_bwd(coef, pred, target, hand_mask, ctx.hand_weight, ctx.skip_frames,
                                ctx.backend, grad_loss)
    grad_target = None
    if ctx.needs_input_grad[2]:  # IPA: L is a function of err_ref - err, so dL/d err_ref = -dL/d err
        grad_target = target_grad(ctx, grad_pred, -(grad_loss * coef), ref, target, hand_mask)
    if not ctx.needs_input_grad[0]:
        grad_pred = None
    return grad_pred, None, grad_target, None, None, None, None, None, None, None, None


_halo_loss_fwd.register_autograd(_backward, setup_context=_setup_context)


def halo_loss(pred, ref, target, hand_mask, timesteps, ref_error, *, objective, beta, hand_weight,
              skip_frames, backend):
    """Validated inputs in, `(loss, metrics)` out; see `ipa.ops.flow_ipa_loss`/`flow_sft_loss`."""
    loss, stats, _ = _halo_loss_fwd(pred, ref, target, hand_mask, timesteps, ref_error, objective,
                                    float(beta), float(hand_weight), skip_frames, backend)
    names = IPA_STATS if objective == "ipa" else SFT_STATS
    return loss, dict(zip(names, stats.detach().unbind()))
