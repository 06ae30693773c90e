"""Triton kernels for the HALO-weighted squared error (installed as `ipa.kernels.halo`).

Layout: pred, ref, target are contiguous [B, C, F, HW]; the optional hand mask is contiguous
[B, F - skip, HW] (bool viewed as uint8) and broadcast over C. The grid is
(B * C * F planes, cdiv(HW, BLOCK)): each program streams one BLOCK of one (b, c, f) plane, so
every load is unit-stride and at most one mask plane is touched per program.

Math (see also csrc/halo.cpp). With N = C * F * HW and
    w = 1                                           for frames f <  skip
    w = 1 + (lambda - 1) * clamp(mask, 0, 1)        for frames f >= skip,
the forward is      err[b]  = (1 / N) * sum w * (pred - target)^2
and the backward    d err[b] / d pred = (2 / N) * w * (pred - target),
so with the upstream g[b] the gradient is  (2 g[b] / N) * w * (pred - target), written in pred's
dtype in one pass. The forward reads pred, ref and target once and produces both errors; each
program writes one fp32 (fp64 for fp64 inputs) partial sum per error, and the partials are
reduced per sample on the host side in a fixed order (deterministic, no atomics).
clamp is two `where`s so a NaN in the mask stays NaN.
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _halo_weight(mask_ptr, b, f, offs, in_bounds, mask_frames, skip, HW, lam1, ACC: tl.constexpr):
    # Frames before `skip` are never hand-weighted; their mask load is switched off entirely.
    # (f broadcast to a block first: Triton's interpreter rejects block & scalar-bool masks.)
    use_mask = in_bounds & (tl.zeros_like(offs) + f >= skip)
    mask_plane = (b * mask_frames + tl.maximum(f - skip, 0)).to(tl.int64) * HW
    m = tl.load(mask_ptr + mask_plane + offs, mask=use_mask, other=0).to(ACC)
    m = tl.where(m < 0, 0.0, m)
    m = tl.where(m > 1, 1.0, m)
    return 1.0 + lam1 * m


@triton.jit
def _block_coords(C, F, HW, BLOCK: tl.constexpr):
    """This program's (b, c, f) plane, its BLOCK of that plane, and the plane's int64 offset."""
    plane = tl.program_id(0)
    blk = tl.program_id(1)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    return plane, blk, plane // (C * F), plane % F, offs, offs < HW, plane.to(tl.int64) * HW


@triton.jit
def _halo_fwd_kernel(
    pred_ptr, ref_ptr, target_ptr, mask_ptr, part_pred_ptr, part_ref_ptr,
    C, F, HW, skip, mask_frames, lam1,
    HAS_REF: tl.constexpr, HAS_MASK: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    plane, blk, b, f, offs, in_bounds, base = _block_coords(C, F, HW, BLOCK)

    t = tl.load(target_ptr + base + offs, mask=in_bounds, other=0).to(ACC)
    dp = tl.load(pred_ptr + base + offs, mask=in_bounds, other=0).to(ACC) - t
    if HAS_MASK:
        w = _halo_weight(mask_ptr, b, f, offs, in_bounds, mask_frames, skip, HW, lam1, ACC)
    else:
        w = 1.0
    part = plane.to(tl.int64) * tl.num_programs(1) + blk
    tl.store(part_pred_ptr + part, tl.sum(w * dp * dp, axis=0))
    if HAS_REF:
        dr = tl.load(ref_ptr + base + offs, mask=in_bounds, other=0).to(ACC) - t
        tl.store(part_ref_ptr + part, tl.sum(w * dr * dr, axis=0))


@triton.jit
def _halo_bwd_kernel(
    scale_ptr, pred_ptr, target_ptr, mask_ptr, grad_ptr,
    C, F, HW, skip, mask_frames, lam1,
    HAS_MASK: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    plane, blk, b, f, offs, in_bounds, base = _block_coords(C, F, HW, BLOCK)

    scale = tl.load(scale_ptr + b).to(ACC)  # 2 * g[b] / N
    d = (tl.load(pred_ptr + base + offs, mask=in_bounds, other=0).to(ACC)
         - tl.load(target_ptr + base + offs, mask=in_bounds, other=0).to(ACC))
    if HAS_MASK:
        d = d * _halo_weight(mask_ptr, b, f, offs, in_bounds, mask_frames, skip, HW, lam1, ACC)
    tl.store(grad_ptr + base + offs, (scale * d).to(grad_ptr.dtype.element_ty), mask=in_bounds)


def _launch_config(hw: int):
    block = min(4096, triton.next_power_of_2(max(hw, 16)))
    num_warps = 8 if block >= 2048 else 4
    return block, num_warps


def _acc_dtype(dtype: torch.dtype):
    return (tl.float64, torch.float64) if dtype == torch.float64 else (tl.float32, torch.float32)


def halo_forward(pred, ref, target, mask, hand_weight: float, skip_frames: int):
    """Per-sample errors of `pred` (and `ref`) against `target`.

    Inputs are contiguous: pred/ref/target [B, C, F, H, W], mask [B, F - skip, H, W] or None.
    Returns (err_pred [B], err_ref [B] or None) in fp32 (fp64 for fp64 inputs).
    """
    B, C, F, H, W = pred.shape
    hw = H * W
    block, num_warps = _launch_config(hw)
    grid = (B * C * F, triton.cdiv(hw, block))
    acc_tl, acc_torch = _acc_dtype(pred.dtype)
    part_pred = torch.empty(grid, device=pred.device, dtype=acc_torch)
    part_ref = torch.empty(grid, device=pred.device, dtype=acc_torch) if ref is not None else part_pred
    _halo_fwd_kernel[grid](
        pred, ref if ref is not None else pred, target, mask if mask is not None else pred,
        part_pred, part_ref,
        C, F, hw, skip_frames, F - skip_frames, float(hand_weight) - 1.0,
        HAS_REF=ref is not None, HAS_MASK=mask is not None, ACC=acc_tl, BLOCK=block,
        num_warps=num_warps,
    )
    n = C * F * hw

    def per_sample(part):
        # fp64 fold of a few thousand partials per sample: fixed order, negligible cost.
        return (part.view(B, -1).to(torch.float64).sum(dim=1) / n).to(acc_torch)

    return per_sample(part_pred), (per_sample(part_ref) if ref is not None else None)


def halo_backward(grad_err, pred, target, mask, hand_weight: float, skip_frames: int):
    """Gradient of the per-sample error with respect to `pred`, in pred's dtype."""
    B, C, F, H, W = pred.shape
    hw = H * W
    block, num_warps = _launch_config(hw)
    grid = (B * C * F, triton.cdiv(hw, block))
    acc_tl, acc_torch = _acc_dtype(pred.dtype)
    scale = (grad_err.to(acc_torch) * (2.0 / (C * F * hw))).contiguous()
    grad = torch.empty_like(pred)
    _halo_bwd_kernel[grid](
        scale, pred, target, mask if mask is not None else pred, grad,
        C, F, hw, skip_frames, F - skip_frames, float(hand_weight) - 1.0,
        HAS_MASK=mask is not None, ACC=acc_tl, BLOCK=block, num_warps=num_warps,
    )
    return grad
