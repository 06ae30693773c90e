"""Flow-matching preference losses on the fused HALO error: IPA, and the SFT and DPO baselines.

The heavy part of each loss (reading the [B, C, F, H, W] predictions) is the fused HALO error
kernel; what remains is a head over B scalars. IPA and SFT run as one custom op each way
(`halo_loss.py`); DPO, a baseline, composes two `halo_errors` calls with its head in PyTorch.
Each loss returns `(loss, metrics)` where metrics are detached 0-dim tensors (no host sync).
"""

import torch
import torch.nn.functional as F

from . import _checks
from .halo_error import check_hyper_parameters, halo_errors, prepare_inputs
from .halo_loss import halo_loss


def _reference_error(name, ref_error, pred, err):
    _checks.check_per_sample(name, ref_error, pred.shape[0], pred)
    return ref_error.detach().to(err.dtype)


def flow_ipa_loss(model_pred, target, timesteps, hand_mask=None, *, ref_pred=None, ref_error=None,
                  beta=600.0, hand_weight=10.0, skip_frames=1, backend="auto"):
    """Implicit Preference Alignment loss on flow-matching velocity predictions.

        L = mean_b -log sigmoid( beta/2 * (1 - t_b)^2 * (err_ref_b - err_model_b) )

    Args:
        model_pred: the trainable policy's velocity prediction [B, C, F, H, W].
        target: the flow-matching target `noise - x0`, same shape. Usually data; a target that
            needs a gradient gets it through both errors (with `ref_pred`, err_ref depends on it).
        timesteps: normalized timesteps t = s in [0, 1] (s = 1 is pure noise), shape (B,). The
            range is checked for CPU tensors only (on CUDA the check would sync the device).
        hand_mask: latent-grid hand mask [B, F - skip_frames, H, W] (see `halo_error`), or None.
        ref_pred: the frozen reference's prediction on the same inputs (no gradient), or
        ref_error: its precomputed per-sample error, shape (B,). Pass exactly one.
        beta: preference strength (600 in the paper). hand_weight, skip_frames: HALO weighting.
    `timesteps`, `ref_pred` and `ref_error` are constants of the objective: no gradient reaches
    them (`ipa.ops.reference` differentiates in timesteps; this op does not).
    Returns:
        (loss, metrics) with metrics `ipa_gap` (mean err_ref - err_model), `model_error`,
        `reference_error`, `implicit_accuracy` (fraction of samples beating the reference),
        `logit` (mean preference logit). With model_pred == ref_pred the loss is exactly log 2.
    """
    _checks.exactly_one("ref_pred", ref_pred, "ref_error", ref_error)
    beta = _checks.as_number("beta", beta, positive=True)
    target, ref_pred, hand_mask, hand_weight, skip_frames, backend = prepare_inputs(
        model_pred, target, hand_mask, ref_pred, hand_weight, skip_frames, backend)
    B = model_pred.shape[0]
    if ref_error is not None:
        _checks.check_per_sample("ref_error", ref_error, B, model_pred)
        ref_error = ref_error.detach()
    timesteps = _checks.check_per_sample("timesteps", timesteps, B, model_pred, unit_interval=True)
    return halo_loss(model_pred, ref_pred, target, hand_mask, timesteps.detach(), ref_error,
                     objective="ipa", beta=beta, hand_weight=hand_weight, skip_frames=skip_frames,
                     backend=backend)


def flow_sft_loss(model_pred, target, hand_mask=None, *, hand_weight=10.0, skip_frames=1, backend="auto"):
    """Flow-matching fine-tuning loss `mean_b err_b`, HALO-weighted when `hand_mask` is given.

    Returns (loss, {"model_error": ...}). Same arguments as `halo_error`.
    """
    target, _, hand_mask, hand_weight, skip_frames, backend = prepare_inputs(
        model_pred, target, hand_mask, None, hand_weight, skip_frames, backend)
    return halo_loss(model_pred, None, target, hand_mask, None, None, objective="sft", beta=1.0,
                     hand_weight=hand_weight, skip_frames=skip_frames, backend=backend)


def flow_dpo_loss(model_pred_w, model_pred_l, target_w, target_l, hand_mask_w=None, hand_mask_l=None,
                  *, ref_pred_w=None, ref_pred_l=None, ref_error_w=None, ref_error_l=None,
                  beta=600.0, hand_weight=10.0, skip_frames=1, backend="auto"):
    """Paired Flow/Diffusion-DPO on a winner (w) and a loser (l) that share noise and timestep.

        L = mean_b -log sigmoid( -beta/2 * ((e_w - e_ref_w) - (e_l - e_ref_l)) )

    Each side takes its reference as a prediction (`ref_pred_*`) or a precomputed error
    (`ref_error_*`), exactly one per side. Returns (loss, metrics) with `implicit_accuracy`
    (fraction of pairs where the policy improves the winner more than the loser), `reward_margin`
    (mean of (e_ref_w - e_w) - (e_ref_l - e_l)), `model_error_w/_l`, `reference_error_w/_l`.
    """
    _checks.exactly_one("ref_pred_w", ref_pred_w, "ref_error_w", ref_error_w)
    _checks.exactly_one("ref_pred_l", ref_pred_l, "ref_error_l", ref_error_l)
    beta = _checks.as_number("beta", beta, positive=True)
    _checks.check_prediction("model_pred_w", model_pred_w)
    _checks.check_like("model_pred_l", model_pred_l, "model_pred_w", model_pred_w)
    kw = dict(hand_weight=hand_weight, skip_frames=skip_frames, backend=backend)
    e_w, e_ref_w = halo_errors(model_pred_w, target_w, hand_mask_w, ref_pred=ref_pred_w,
                               pred_name="model_pred_w", arg_suffix="_w", **kw)
    e_l, e_ref_l = halo_errors(model_pred_l, target_l, hand_mask_l, ref_pred=ref_pred_l,
                               pred_name="model_pred_l", arg_suffix="_l", **kw)
    if e_ref_w is None:
        e_ref_w = _reference_error("ref_error_w", ref_error_w, model_pred_w, e_w)
    if e_ref_l is None:
        e_ref_l = _reference_error("ref_error_l", ref_error_l, model_pred_l, e_l)
    margin = (e_ref_w - e_w) - (e_ref_l - e_l)  # = -((e_w - e_ref_w) - (e_l - e_ref_l))
    loss = F.softplus(-beta / 2 * margin).mean()  # -logsigmoid; softplus stays serial on B elements
    metrics = {
        "reward_margin": margin.mean(),
        "implicit_accuracy": (margin > 0).to(e_w.dtype).mean(),
        "model_error_w": e_w.mean(),
        "model_error_l": e_l.mean(),
        "reference_error_w": e_ref_w.mean(),
        "reference_error_l": e_ref_l.mean(),
    }
    return loss, {k: v.detach() for k, v in metrics.items()}


class _LossModule(torch.nn.Module):
    _fields = ("hand_weight", "skip_frames", "backend")

    def extra_repr(self):
        return ", ".join(f"{k}={getattr(self, k)!r}" for k in self._fields)


class FlowIPALoss(_LossModule):
    """`flow_ipa_loss` with its hyper-parameters held (beta 600, hand weight 10 by default)."""

    _fields = ("beta",) + _LossModule._fields

    def __init__(self, beta=600.0, hand_weight=10.0, skip_frames=1, backend="auto"):
        super().__init__()
        check_hyper_parameters(beta=beta, hand_weight=hand_weight, skip_frames=skip_frames, backend=backend)
        self.beta, self.hand_weight, self.skip_frames, self.backend = beta, hand_weight, skip_frames, backend

    def forward(self, model_pred, target, timesteps, hand_mask=None, *, ref_pred=None, ref_error=None):
        return flow_ipa_loss(model_pred, target, timesteps, hand_mask, ref_pred=ref_pred,
                             ref_error=ref_error, beta=self.beta, hand_weight=self.hand_weight,
                             skip_frames=self.skip_frames, backend=self.backend)


class FlowSFTLoss(_LossModule):
    """`flow_sft_loss` with its hyper-parameters held; `hand_weight=1` gives plain flow matching."""

    def __init__(self, hand_weight=10.0, skip_frames=1, backend="auto"):
        super().__init__()
        check_hyper_parameters(hand_weight=hand_weight, skip_frames=skip_frames, backend=backend)
        self.hand_weight, self.skip_frames, self.backend = hand_weight, skip_frames, backend

    def forward(self, model_pred, target, hand_mask=None):
        return flow_sft_loss(model_pred, target, hand_mask, hand_weight=self.hand_weight,
                             skip_frames=self.skip_frames, backend=self.backend)


class FlowDPOLoss(_LossModule):
    """`flow_dpo_loss` with its hyper-parameters held."""

    _fields = ("beta",) + _LossModule._fields

    def __init__(self, beta=600.0, hand_weight=10.0, skip_frames=1, backend="auto"):
        super().__init__()
        check_hyper_parameters(beta=beta, hand_weight=hand_weight, skip_frames=skip_frames, backend=backend)
        self.beta, self.hand_weight, self.skip_frames, self.backend = beta, hand_weight, skip_frames, backend

    def forward(self, model_pred_w, model_pred_l, target_w, target_l, hand_mask_w=None,
                hand_mask_l=None, **refs):
        return flow_dpo_loss(model_pred_w, model_pred_l, target_w, target_l, hand_mask_w, hand_mask_l,
                             beta=self.beta, hand_weight=self.hand_weight,
                             skip_frames=self.skip_frames, backend=self.backend, **refs)
