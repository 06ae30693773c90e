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
program writes one fp32 (fp64 for fp64 inputs) partial sum per error. `_fold_kernel` then runs one
program per sample: it folds the sample's partials in fp64 in a fixed order (deterministic, no
atomic sums) and, for a loss, writes the sample's dL/derr; the last sample to finish (one atomic
count per call) evaluates the batch's loss and metrics. A loss forward is two launches, not a dozen.
clamp is two `where`s so a NaN in the mask stays NaN.
"""

import contextlib
import functools

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
    pred_ptr, ref_ptr, target_ptr, mask_ptr, part_pred_ptr, part_ref_ptr, sync_ptr,
    C, F, HW, skip, mask_frames, lam1,
    HAS_REF: tl.constexpr, HAS_MASK: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    plane, blk, b, f, offs, in_bounds, base = _block_coords(C, F, HW, BLOCK)
    if (plane == 0) & (blk == 0):  # arm the fold's counter: the launch boundary orders it, no memset launch
        tl.store(sync_ptr, 0)

    # Every load is issued before the first reduction: a load after a tl.sum would wait behind its
    # barrier, a second memory round trip per program.
    t = tl.load(target_ptr + base + offs, mask=in_bounds, other=0).to(ACC)
    dp = tl.load(pred_ptr + base + offs, mask=in_bounds, other=0).to(ACC) - t
    if HAS_REF:
        dr = tl.load(ref_ptr + base + offs, mask=in_bounds, other=0).to(ACC) - t
    if HAS_MASK:
        w = _halo_weight(mask_ptr, b, f, offs, in_bounds, mask_frames, skip, HW, lam1, ACC)
    else:
        w = 1.0
    part = plane.to(tl.int64) * tl.num_programs(1) + blk
    tl.store(part_pred_ptr + part, tl.sum(w * dp * dp, axis=0))
    if HAS_REF:
        tl.store(part_ref_ptr + part, tl.sum(w * dr * dr, axis=0))


@triton.jit
def _halo_bwd_kernel(
    grad_err_ptr, grad_scale_ptr, pred_ptr, target_ptr, mask_ptr, grad_ptr,
    C, F, HW, N, skip, mask_frames, lam1,
    HAS_SCALE: tl.constexpr, HAS_MASK: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    plane, blk, b, f, offs, in_bounds, base = _block_coords(C, F, HW, BLOCK)

    # 2 g[b] / N, with g[b] = grad_err[b] * grad_scale (a loss's upstream gradient) when given:
    # no host-side kernel for either
    g = tl.load(grad_err_ptr + b).to(ACC)
    if HAS_SCALE:
        g = g * tl.load(grad_scale_ptr).to(ACC)
    scale = g * 2.0 / N
    d = (tl.load(pred_ptr + base + offs, mask=in_bounds, other=0).to(ACC)
         - tl.load(target_ptr + base + offs, mask=in_bounds, other=0).to(ACC))
    if HAS_MASK:
        d = d * _halo_weight(mask_ptr, b, f, offs, in_bounds, mask_frames, skip, HW, lam1, ACC)
    tl.store(grad_ptr + base + offs, (scale * d).to(grad_ptr.dtype.element_ty), mask=in_bounds)


HEAD_NONE, HEAD_IPA, HEAD_SFT = 0, 1, 2
MAX_FOLD_BATCH = 4096  # the last program holds the batch's errors as one vector; larger batches fold in torch
# Partials each fold program reads per round trip, and its warps: the choice of the former
# one-program fold on an H200 (720p-b8: 8.2 us); `benchmarks/tune_halo.py` sweeps both.
FOLD_TILE = 2048
FOLD_WARPS = 16


@triton.jit
def _ipa_terms(err, err_ref, t, beta):
    """c = beta/2 (1 - t)^2, gap = err_ref - err, z = c gap, softplus(-z), sigmoid(-z): from
    e = exp(-|z|) in (0, 1], nothing overflows in either branch and a NaN z stays NaN in both."""
    c = beta * 0.5 * (1.0 - t) * (1.0 - t)
    gap = err_ref - err
    z = c * gap
    e = tl.exp(-tl.abs(z))
    softplus = tl.maximum(-z, 0.0) + tl.log(1.0 + e)
    sig = tl.where(z >= 0, e / (1.0 + e), 1.0 / (1.0 + e))
    return c, gap, z, softplus, sig


@triton.jit
def _fold_kernel(
    part_ptr, part_ref_ptr, ref_err_ptr, t_ptr, err_ptr, err_ref_ptr, loss_ptr, stats_ptr, coef_ptr, sync_ptr,
    B, P, N, beta,
    HEAD: tl.constexpr, REF_PARTS: tl.constexpr, ROUND_FP32: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """Program b: sample b's errors from its P partials (fp64 tile sums); with a loss head, its coef.

    HEAD_NONE writes err (and err_ref); HEAD_IPA / HEAD_SFT also write coef = dL/derr, and the
    last program to finish (`sync`, zeroed by the forward) writes loss and stats:
      IPA: c = beta/2 (1 - t)^2, logit = c (err_ref - err), L = mean softplus(-logit),
           coef = c sigmoid(-logit) / B, stats = [gap, err, err_ref, gap > 0, logit] means;
      SFT: L = mean err, coef = 1 / B, stats = [L].
    Errors are rounded to the accumulation dtype before the head, as `halo_error` returns them,
    so a stored reference error gives the same gap as the online one (csrc/halo.cpp does the same).
    """
    b = tl.program_id(0)
    cols = tl.arange(0, BLOCK_P)
    row = b.to(tl.int64) * P
    acc = tl.zeros([BLOCK_P], dtype=tl.float64)
    acc_ref = tl.zeros([BLOCK_P], dtype=tl.float64)
    for start in range(0, P, BLOCK_P):
        idx = start + cols
        acc += tl.load(part_ptr + row + idx, mask=idx < P, other=0).to(tl.float64)
        if REF_PARTS:
            acc_ref += tl.load(part_ref_ptr + row + idx, mask=idx < P, other=0).to(tl.float64)
    err = tl.sum(acc, axis=0) / N
    err_ref = tl.sum(acc_ref, axis=0) / N
    if HEAD == 1:
        if not REF_PARTS:
            err_ref = tl.load(ref_err_ptr + b).to(tl.float64)
    if ROUND_FP32:  # a stored reference error too: coef and the batch's stats see the same value
        err = err.to(tl.float32).to(tl.float64)
        err_ref = err_ref.to(tl.float32).to(tl.float64)
    out_ty = err_ptr.dtype.element_ty
    tl.store(err_ptr + b, err.to(out_ty))
    if REF_PARTS or HEAD == 1:
        tl.store(err_ref_ptr + b, err_ref.to(out_ty))
    if HEAD != 0:
        if HEAD == 1:
            c, _gap, _z, _sp, sig = _ipa_terms(err, err_ref, tl.load(t_ptr + b).to(tl.float64), beta)
            coef = c * sig / B
        else:
            coef = 1.0 / B + 0.0 * err  # SFT (fp64 like the IPA branch)
        tl.store(coef_ptr + b, coef.to(out_ty))
        tl.debug_barrier()  # every thread's stores before the release
        if tl.atomic_add(sync_ptr, 1, sem="acq_rel") == B - 1:  # the last sample: the batch's means
            bs = tl.arange(0, BLOCK_B)
            valid = bs < B
            # .cg: written by other SMs, read past this SM's (incoherent) L1
            errs = tl.load(err_ptr + bs, mask=valid, other=0, cache_modifier=".cg").to(tl.float64)
            if HEAD == 2:
                loss = tl.sum(tl.where(valid, errs, 0.0), axis=0) / B
                tl.store(loss_ptr, loss.to(out_ty))
                tl.store(stats_ptr, loss.to(out_ty))
            else:
                errs_ref = tl.load(err_ref_ptr + bs, mask=valid, other=0, cache_modifier=".cg").to(tl.float64)
                ts = tl.load(t_ptr + bs, mask=valid, other=0).to(tl.float64)
                _c, gap, z, softplus, _sig = _ipa_terms(errs, errs_ref, ts, beta)
                tl.store(loss_ptr, (tl.sum(tl.where(valid, softplus, 0.0), axis=0) / B).to(out_ty))
                tl.store(stats_ptr + 0, (tl.sum(tl.where(valid, gap, 0.0), axis=0) / B).to(out_ty))
                tl.store(stats_ptr + 1, (tl.sum(tl.where(valid, errs, 0.0), axis=0) / B).to(out_ty))
                tl.store(stats_ptr + 2, (tl.sum(tl.where(valid, errs_ref, 0.0), axis=0) / B).to(out_ty))
                tl.store(stats_ptr + 3, (tl.sum(tl.where(valid & (gap > 0), 1.0, 0.0), axis=0) / B).to(out_ty))
                tl.store(stats_ptr + 4, (tl.sum(tl.where(valid, z, 0.0), axis=0) / B).to(out_ty))
            tl.store(sync_ptr, 0)  # re-armed: the fold alone may run again on the same partials


def _on_inputs_device(launcher):
    """Triton launches on the *current* CUDA device: make it the inputs' one (all on one device,
    the ops check), so a caller with tensors on cuda:1 and cuda:0 current gets a correct launch,
    not an illegal address."""
    @functools.wraps(launcher)
    def launch(first, *args, **kwargs):
        with torch.cuda.device(first.device) if first.is_cuda else contextlib.nullcontext():
            return launcher(first, *args, **kwargs)
    return launch


# (BLOCK, num_warps) per kernel and element size, swept by `benchmarks/tune_halo.py` on an H200 at
# 720p-b8 (benchmarks/NOTES.md). bf16: the forward, a reduction, is fastest as many small programs
# (1024 x 4 warps: 93% of copy bandwidth, against 80% at 4096 x 8), the pointwise backward as large
# ones (8192 x 16: 95%). fp32: the forward as large ones (8192 x 4: every load in flight at once,
# 241 registers, no spills), the backward at 4096 x 16; the step 245 -> 234 us. Element sizes other
# than 4 bytes take the 2-byte choice (fp64's 8-byte elements would spill the fp32 forward's).
LAUNCH_CONFIGS = {("fwd", 2): (1024, 4), ("bwd", 2): (8192, 16), ("fwd", 4): (8192, 4), ("bwd", 4): (4096, 16)}


def _launch_config(hw: int, kernel: str, itemsize: int):
    """(BLOCK, num_warps) for the forward ("fwd") or backward ("bwd") kernel on planes of `hw`
    elements of `itemsize` bytes. A plane smaller than the tuned BLOCK takes the next power of two
    of its size, with at most one warp per 256 elements (and at least 4)."""
    block, warps = LAUNCH_CONFIGS[(kernel, 4 if itemsize == 4 else 2)]
    block = min(block, triton.next_power_of_2(max(hw, 16)))
    return block, max(4, min(warps, block // 256))


def _acc_dtype(dtype: torch.dtype):
    return (tl.float64, torch.float64) if dtype == torch.float64 else (tl.float32, torch.float32)


def _partials(pred, ref, target, mask, hand_weight, skip_frames):
    """Launch the forward kernel: [B, P] partial sums for pred (and ref), P = C * F * blocks, and
    the fold's counter, zeroed by the kernel."""
    B, C, F, H, W = pred.shape
    hw = H * W
    block, num_warps = _launch_config(hw, "fwd", pred.element_size())
    grid = (B * C * F, triton.cdiv(hw, block))
    acc_tl, acc_torch = _acc_dtype(pred.dtype)
    part_pred = torch.empty(grid, device=pred.device, dtype=acc_torch)
    part_ref = torch.empty(grid, device=pred.device, dtype=acc_torch) if ref is not None else part_pred
    sync = torch.empty(1, device=pred.device, dtype=torch.int32)
    _halo_fwd_kernel[grid](
        pred, ref if ref is not None else pred, target, mask if mask is not None else pred,
        part_pred, part_ref, sync,
        C, F, hw, skip_frames, F - skip_frames, float(hand_weight) - 1.0,
        HAS_REF=ref is not None, HAS_MASK=mask is not None, ACC=acc_tl, BLOCK=block,
        num_warps=num_warps,
    )
    return part_pred.view(B, -1), (part_ref.view(B, -1) if ref is not None else None), C * F * hw, sync


def _fold(part, part_ref, sync, *, head, n, acc_torch, ref_error=None, t=None, beta=0.0, n_stats=1):
    """Launch `_fold_kernel`, one program per sample; `sync` is a zeroed int32 counter (the forward
    zeroes it; the fold leaves it zeroed). The outputs the head mode does not write are stand-ins."""
    B, P = part.shape
    dummy = part

    def out(shape, wanted=True):
        return torch.empty(shape, device=part.device, dtype=acc_torch) if wanted else dummy

    err = out(B)
    err_ref = out(B, head != HEAD_NONE or part_ref is not None)
    loss, stats, coef = out((), head != HEAD_NONE), out(n_stats, head != HEAD_NONE), out(B, head != HEAD_NONE)
    _fold_kernel[(B,)](
        part, part_ref if part_ref is not None else dummy, ref_error if ref_error is not None else dummy,
        t if t is not None else dummy, err, err_ref, loss, stats, coef, sync,
        B, P, n, float(beta),
        HEAD=head, REF_PARTS=part_ref is not None, ROUND_FP32=acc_torch == torch.float32,
        BLOCK_B=triton.next_power_of_2(B), BLOCK_P=min(FOLD_TILE, triton.next_power_of_2(max(P, 16))),
        num_warps=FOLD_WARPS,
    )
    return err, err_ref, loss, stats, coef


def _fold_in_torch(part, n, acc_torch):
    return (part.to(torch.float64).sum(dim=1) / n).to(acc_torch)


@_on_inputs_device
def halo_forward(pred, ref, target, mask, hand_weight: float, skip_frames: int):
    """Per-sample errors of `pred` (and `ref`) against `target`.

    Inputs are contiguous: pred/ref/target [B, C, F, H, W], mask [B, F - skip, H, W] or None.
    Returns (err_pred [B], err_ref [B] or None) in fp32 (fp64 for fp64 inputs).
    """
    part, part_ref, n, sync = _partials(pred, ref, target, mask, hand_weight, skip_frames)
    acc_torch = _acc_dtype(pred.dtype)[1]
    if part.shape[0] > MAX_FOLD_BATCH:
        return _fold_in_torch(part, n, acc_torch), (_fold_in_torch(part_ref, n, acc_torch) if ref is not None else None)
    err, err_ref, *_ = _fold(part, part_ref, sync, head=HEAD_NONE, n=n, acc_torch=acc_torch)
    return err, (err_ref if ref is not None else None)


@_on_inputs_device
def halo_loss_forward(pred, ref, target, mask, timesteps, ref_error, objective: str, beta: float,
                      hand_weight: float, skip_frames: int, n_stats: int):
    """(loss, stats [n_stats], coef [B]) for objective "ipa" or "sft" in two launches, or None when
    the batch is over MAX_FOLD_BATCH (the caller then runs the head in torch)."""
    if pred.shape[0] > MAX_FOLD_BATCH:
        return None
    part, part_ref, n, sync = _partials(pred, ref, target, mask, hand_weight, skip_frames)
    head = HEAD_IPA if objective == "ipa" else HEAD_SFT
    _, _, loss, stats, coef = _fold(part, part_ref, sync, head=head, n=n, acc_torch=_acc_dtype(pred.dtype)[1],
                                    ref_error=ref_error, t=timesteps, beta=beta, n_stats=n_stats)
    return loss, stats, coef


@_on_inputs_device
def halo_backward(grad_err, pred, target, mask, hand_weight: float, skip_frames: int, grad_scale=None):
    """Gradient of `sum_b grad_scale * grad_err[b] * err[b]` with respect to `pred`, in pred's
    dtype; `grad_scale` is a 0-dim tensor or None (1)."""
    B, C, F, H, W = pred.shape
    hw = H * W
    block, num_warps = _launch_config(hw, "bwd", pred.element_size())
    grid = (B * C * F, triton.cdiv(hw, block))
    acc_tl, _ = _acc_dtype(pred.dtype)
    grad = torch.empty_like(pred)
    _halo_bwd_kernel[grid](
        grad_err, grad_scale if grad_scale is not None else grad_err, pred, target,
        mask if mask is not None else pred, grad,
        C, F, hw, C * F * hw, skip_frames, F - skip_frames, float(hand_weight) - 1.0,
        HAS_SCALE=grad_scale is not None, HAS_MASK=mask is not None, ACC=acc_tl, BLOCK=block,
        num_warps=num_warps,
    )
    return grad
