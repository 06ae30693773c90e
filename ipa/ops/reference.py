"""Plain-PyTorch statement of every op in `ipa.ops`: the spec the kernels are tested against.

Everything here is computed in the dtype of its inputs with ordinary autograd, with no fusion and
no input checking: pass fp64 tensors to get the ground truth, bf16 tensors to get the eager bf16
baseline. Shapes follow the package convention: latents [B, C, F, H, W], hand masks on the latent
grid [B, F - skip_frames, H, W] (or with a singleton channel axis), timesteps s in [0, 1] with s = 1
pure noise.
"""

import torch
import torch.nn.functional as F


def halo_weight(hand_mask, num_frames, *, hand_weight=10.0, skip_frames=1, dtype=torch.float32):
    """HALO weight [B, 1, F, H, W]: 1 on the first `skip_frames` frames and on background,
    `hand_weight` on hand pixels, `1 + (hand_weight - 1) * clamp(mask, 0, 1)` in general."""
    if hand_mask.dim() == 5:
        hand_mask = hand_mask.squeeze(1)
    m = hand_mask.to(dtype).clamp(0, 1)
    hand = 1 + (hand_weight - 1) * m
    B, _, H, W = hand.shape
    first = torch.ones(B, skip_frames, H, W, dtype=dtype, device=hand.device)
    w = torch.cat([first, hand], dim=1)
    assert w.shape[1] == num_frames
    return w.unsqueeze(1)


def halo_error(pred, target, hand_mask=None, *, hand_weight=10.0, skip_frames=1):
    """Per-sample `mean over (C, F, H, W) of w * (pred - target)^2`, shape [B]."""
    sq = (pred - target) ** 2
    if hand_mask is not None:
        sq = sq * halo_weight(
            hand_mask, pred.shape[2], hand_weight=hand_weight, skip_frames=skip_frames, dtype=sq.dtype
        )
    return sq.mean(dim=(1, 2, 3, 4))


def ipa_logits(model_error, ref_error, timesteps, beta=600.0):
    """`beta/2 * (1 - t)^2 * (err_ref - err_model)`: positive when the policy beats the reference."""
    return beta / 2 * (1 - timesteps) ** 2 * (ref_error - model_error)


def flow_ipa_loss(model_pred, target, timesteps, hand_mask=None, *, ref_pred=None, ref_error=None,
                  beta=600.0, hand_weight=10.0, skip_frames=1):
    """IPA loss `mean_b -log sigmoid(beta/2 (1 - t_b)^2 (err_ref_b - err_model_b))`."""
    kw = dict(hand_weight=hand_weight, skip_frames=skip_frames)
    model_error = halo_error(model_pred, target, hand_mask, **kw)
    if ref_error is None:
        ref_error = halo_error(ref_pred.detach(), target, hand_mask, **kw)
    logits = ipa_logits(model_error, ref_error, timesteps, beta)
    return -F.logsigmoid(logits).mean()


def flow_dpo_loss(model_pred_w, model_pred_l, target_w, target_l, hand_mask_w=None,
                  hand_mask_l=None, *, ref_pred_w=None, ref_pred_l=None, ref_error_w=None,
                  ref_error_l=None, beta=600.0, hand_weight=10.0, skip_frames=1):
    """Flow/Diffusion-DPO: `-log sigmoid(-beta/2 ((e_w - e_ref_w) - (e_l - e_ref_l)))`, mean over b."""
    kw = dict(hand_weight=hand_weight, skip_frames=skip_frames)
    e_w = halo_error(model_pred_w, target_w, hand_mask_w, **kw)
    e_l = halo_error(model_pred_l, target_l, hand_mask_l, **kw)
    if ref_error_w is None:
        ref_error_w = halo_error(ref_pred_w.detach(), target_w, hand_mask_w, **kw)
    if ref_error_l is None:
        ref_error_l = halo_error(ref_pred_l.detach(), target_l, hand_mask_l, **kw)
    return -F.logsigmoid(-beta / 2 * ((e_w - ref_error_w) - (e_l - ref_error_l))).mean()


def flow_sft_loss(model_pred, target, hand_mask=None, *, hand_weight=10.0, skip_frames=1):
    """Flow-matching regression, HALO-weighted when a mask is given: `mean_b err_b`."""
    return halo_error(model_pred, target, hand_mask, hand_weight=hand_weight, skip_frames=skip_frames).mean()
