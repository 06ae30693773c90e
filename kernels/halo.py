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
program writes one fp32 (fp64 for fp64 inputs) partial sum per error, and one more program
(`_fold_kernel`) folds them per sample in fp64 in a fixed order (deterministic, no atomics) and,
for a loss, evaluates its head on the B errors too: a loss forward is two launches, not a dozen.
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
def _plane_block(plane, blk, C, F, HW, BLOCK: tl.constexpr):
    """Block `blk` of the (b, c, f) plane `plane`: (b, f, offsets, in-bounds, the plane's int64 offset)."""
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    return plane // (C * F), plane % F, offs, offs < HW, plane.to(tl.int64) * HW


@triton.jit
def _block_sums(pred_ptr, ref_ptr, target_ptr, mask_ptr, b, f, offs, in_bounds, base, skip, mask_frames, HW,
                lam1, HAS_REF: tl.constexpr, HAS_MASK: tl.constexpr, ACC: tl.constexpr,
                KEEP: tl.constexpr, DROP: tl.constexpr):
    """sum w (pred - target)^2 and sum w (ref - target)^2 over one block. KEEP / DROP: eviction
    policies for what is read again soon (pred, target in the step kernel) and what is not (ref)."""
    # Every load is issued before the first reduction: a load after a tl.sum would wait behind its
    # barrier, a second memory round trip per program.
    t = tl.load(target_ptr + base + offs, mask=in_bounds, other=0, eviction_policy=KEEP).to(ACC)
    dp = tl.load(pred_ptr + base + offs, mask=in_bounds, other=0, eviction_policy=KEEP).to(ACC) - t
    dr = dp
    if HAS_REF:
        dr = tl.load(ref_ptr + base + offs, mask=in_bounds, other=0, eviction_policy=DROP).to(ACC) - t
    if HAS_MASK:
        w = _halo_weight(mask_ptr, b, f, offs, in_bounds, mask_frames, skip, HW, lam1, ACC)
    else:
        w = 1.0
    return tl.sum(w * dp * dp, axis=0), tl.sum(w * dr * dr, axis=0)


@triton.jit
def _block_grad(scale, pred_ptr, target_ptr, mask_ptr, grad_ptr, b, f, offs, in_bounds, base, skip,
                mask_frames, HW, lam1, HAS_MASK: tl.constexpr, ACC: tl.constexpr, DROP: tl.constexpr):
    """grad = scale * w * (pred - target) over one block, in grad's dtype (scale = 2 g[b] / N)."""
    d = (tl.load(pred_ptr + base + offs, mask=in_bounds, other=0, eviction_policy=DROP).to(ACC)
         - tl.load(target_ptr + base + offs, mask=in_bounds, other=0, eviction_policy=DROP).to(ACC))
    if HAS_MASK:
        d = d * _halo_weight(mask_ptr, b, f, offs, in_bounds, mask_frames, skip, HW, lam1, ACC)
    tl.store(grad_ptr + base + offs, (scale * d).to(grad_ptr.dtype.element_ty), mask=in_bounds,
             eviction_policy=DROP)


@triton.jit
def _halo_fwd_kernel(
    pred_ptr, ref_ptr, target_ptr, mask_ptr, part_pred_ptr, part_ref_ptr,
    C, F, HW, skip, mask_frames, lam1,
    HAS_REF: tl.constexpr, HAS_MASK: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    plane, blk = tl.program_id(0), tl.program_id(1)
    b, f, offs, in_bounds, base = _plane_block(plane, blk, C, F, HW, BLOCK)
    sum_pred, sum_ref = _block_sums(pred_ptr, ref_ptr, target_ptr, mask_ptr, b, f, offs, in_bounds, base, skip,
                                    mask_frames, HW, lam1, HAS_REF, HAS_MASK, ACC, "", "")
    part = plane.to(tl.int64) * tl.num_programs(1) + blk
    tl.store(part_pred_ptr + part, sum_pred)
    if HAS_REF:
        tl.store(part_ref_ptr + part, sum_ref)


@triton.jit
def _halo_bwd_kernel(
    grad_err_ptr, grad_scale_ptr, pred_ptr, target_ptr, mask_ptr, grad_ptr,
    C, F, HW, N, skip, mask_frames, lam1,
    HAS_SCALE: tl.constexpr, HAS_MASK: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    b, f, offs, in_bounds, base = _plane_block(tl.program_id(0), tl.program_id(1), C, F, HW, BLOCK)
    # 2 g[b] / N, with g[b] = grad_err[b] * grad_scale (a loss's upstream gradient) when given:
    # no host-side kernel for either
    g = tl.load(grad_err_ptr + b).to(ACC)
    if HAS_SCALE:
        g = g * tl.load(grad_scale_ptr).to(ACC)
    _block_grad(g * 2.0 / N, pred_ptr, target_ptr, mask_ptr, grad_ptr, b, f, offs, in_bounds, base, skip,
                mask_frames, HW, lam1, HAS_MASK, ACC, "")


HEAD_NONE, HEAD_IPA, HEAD_SFT = 0, 1, 2
MAX_FOLD_BATCH = 256  # one program holds a [BLOCK_B, BLOCK_P] tile; larger batches fold in torch
FOLD_TILE = 2048  # elements of that tile: BLOCK_P = FOLD_TILE / BLOCK_B columns of partials per chunk
FOLD_WARPS = 16  # H200, 720p-b8: 6.9 us against 8.1 at 4 warps; more with more partials


@triton.jit
def _fold_kernel(
    part_ptr, part_ref_ptr, ref_err_ptr, t_ptr, err_ptr, err_ref_ptr, loss_ptr, stats_ptr, coef_ptr,
    B, P, N, beta,
    HEAD: tl.constexpr, REF_PARTS: tl.constexpr, ROUND_FP32: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """One program: per-sample errors from [B, P] partials (fp64 tile sums), then the loss head.

    HEAD_NONE writes err (and err_ref); HEAD_IPA / HEAD_SFT write loss, stats and coef = dL/derr:
      IPA: c = beta/2 (1 - t)^2, logit = c (err_ref - err), L = mean softplus(-logit),
           coef = c sigmoid(-logit) / B, stats = [gap, err, err_ref, gap > 0, logit] means;
      SFT: L = mean err, coef = 1 / B, stats = [L].
    Errors are rounded to the accumulation dtype before the head, as `halo_error` returns them,
    so a stored reference error gives the same gap as the online one (csrc/halo.cpp does the same).
    """
    bs = tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_P)
    valid = bs < B
    rows = bs.to(tl.int64)[:, None] * P
    acc = tl.zeros([BLOCK_B, BLOCK_P], dtype=tl.float64)
    acc_ref = tl.zeros([BLOCK_B, BLOCK_P], dtype=tl.float64)
    for start in range(0, P, BLOCK_P):
        idx = start + cols
        m = valid[:, None] & (idx < P)[None, :]
        acc += tl.load(part_ptr + rows + idx[None, :], mask=m, other=0).to(tl.float64)
        if REF_PARTS:
            acc_ref += tl.load(part_ref_ptr + rows + idx[None, :], mask=m, other=0).to(tl.float64)
    err = tl.sum(acc, axis=1) / N
    err_ref = tl.sum(acc_ref, axis=1) / N
    if ROUND_FP32:
        err = err.to(tl.float32).to(tl.float64)
        err_ref = err_ref.to(tl.float32).to(tl.float64)
    if HEAD == 0:
        tl.store(err_ptr + bs, err.to(err_ptr.dtype.element_ty), mask=valid)
        if REF_PARTS:
            tl.store(err_ref_ptr + bs, err_ref.to(err_ref_ptr.dtype.element_ty), mask=valid)
    else:
        if not REF_PARTS:
            err_ref = tl.load(ref_err_ptr + bs, mask=valid, other=0).to(tl.float64)
        _batch_head(err, err_ref, t_ptr, bs, valid, B, beta, loss_ptr, stats_ptr, coef_ptr, HEAD, True)


@triton.jit
def _ipa_terms(err, err_ref, t, beta):
    """The IPA head's per-sample terms, fp64: c = beta/2 (1 - t)^2, gap = err_ref - err, the logit
    z = c gap, softplus(-z) (the loss) and sigmoid(-z) (its slope)."""
    c = beta * 0.5 * (1.0 - t) * (1.0 - t)
    gap = err_ref - err
    z = c * gap
    # softplus(-z) and sigmoid(-z) from e = exp(-|z|) in (0, 1]: nothing overflows in either
    # branch; a NaN z stays NaN in both.
    e = tl.exp(-tl.abs(z))
    softplus = tl.maximum(-z, 0.0) + tl.log(1.0 + e)
    sig = tl.where(z >= 0, e / (1.0 + e), 1.0 / (1.0 + e))
    return c, gap, z, softplus, sig


@triton.jit
def _batch_head(err, err_ref, t_ptr, bs, valid, B, beta, loss_ptr, stats_ptr, coef_ptr,
                HEAD: tl.constexpr, WRITE_COEF: tl.constexpr):
    """Loss and stats (and coef, when WRITE_COEF) from the [BLOCK_B] fp64 errors of samples `bs`."""
    out_ty = loss_ptr.dtype.element_ty
    if HEAD == 2:
        loss = tl.sum(tl.where(valid, err, 0.0), axis=0) / B
        tl.store(loss_ptr, loss.to(out_ty))
        tl.store(stats_ptr, loss.to(out_ty))
        if WRITE_COEF:
            tl.store(coef_ptr + bs, ((tl.zeros_like(err) + 1.0) / B).to(out_ty), mask=valid)
    else:
        t = tl.load(t_ptr + bs, mask=valid, other=0).to(tl.float64)
        c, gap, z, softplus, sig = _ipa_terms(err, err_ref, t, beta)
        if WRITE_COEF:
            tl.store(coef_ptr + bs, (c * sig / B).to(out_ty), mask=valid)
        tl.store(loss_ptr, (tl.sum(tl.where(valid, softplus, 0.0), axis=0) / B).to(out_ty))
        tl.store(stats_ptr + 0, (tl.sum(tl.where(valid, gap, 0.0), axis=0) / B).to(out_ty))
        tl.store(stats_ptr + 1, (tl.sum(tl.where(valid, err, 0.0), axis=0) / B).to(out_ty))
        tl.store(stats_ptr + 2, (tl.sum(tl.where(valid, err_ref, 0.0), axis=0) / B).to(out_ty))
        tl.store(stats_ptr + 3, (tl.sum(tl.where(valid & (gap > 0), 1.0, 0.0), axis=0) / B).to(out_ty))
        tl.store(stats_ptr + 4, (tl.sum(tl.where(valid, z, 0.0), axis=0) / B).to(out_ty))


# The step kernel: forward, head and gradient of a loss in one persistent launch.
#
# The two-pass step reads pred, ref, target in the forward and pred, target again in the backward,
# and writes the gradient: 6 N s bytes. The gradient of sample b needs only sample b's errors, so
# the step kernel finishes each sample while it is still in L2: its forward blocks (pred and target
# loaded to stay in L2, ref to leave it), then the sample's head, then its gradient blocks in
# reverse order (the most recently read first), reading pred and target from L2: 4 N s from HBM
# when a sample's pred and target fit in L2 (720p bf16: 19 MB of the H200's 50 MB).
#
# Work is handed out by a ticket counter: each program takes the next ticket, in the order
#     F(0), F(1)[:LEAD], G(0), F(1)[LEAD:], F(2)[:LEAD], G(1), F(2)[LEAD:], ..., G(B - 1)
# with F(b) the forward blocks of sample b and G(b) its gradient blocks: LEAD blocks of the next
# sample keep the GPU busy while the last blocks of F(b) finish and sample b's head is written,
# without pushing much of sample b out of L2 before G(b) rereads it. A gradient ticket waits for
# its sample's head, and every forward ticket of that sample was handed out earlier to a program
# already running that never waits: no deadlock, whatever the number of programs resident. Each
# sample's last forward block (the one that counts its sample done) folds the sample's partial
# sums in fp64 in a fixed order (deterministic, no atomic sums), writes err, err_ref and
# coef[b] = dL/derr_b, and releases the sample; the last sample to finish writes the loss and
# stats. The gradient is of L itself (upstream gradient 1); `scale_unless_one` applies another
# upstream gradient in place.
#
# sync (int32, zeroed per call), one counter per 128-byte line (the waiters' polling must not
# contend with the ticket counter's atomics): [0] tickets handed out, [1] samples finished,
# [2 + b] sample b's finished forward blocks, K_F + 1 once its head is written.
SYNC_STRIDE = 32


@triton.jit
def _counter(sync_ptr, i):
    return sync_ptr + i * 32  # SYNC_STRIDE


@triton.jit
def _ticket_work(tk, B, K_F, K_B, LEAD):
    """Ticket -> (sample, is a gradient block, block index within that sample's forward or gradient)."""
    per = K_F + K_B
    m = tk - K_F  # past F(0): segments of `per` tickets, F(s+1)[:lead] G(s) F(s+1)[lead:]; the last G(B-1)
    first = m < 0
    seg = tl.where(first, 0, m // per)
    r = m - seg * per
    lead = tl.where(seg == B - 1, 0, tl.minimum(LEAD, K_F))
    is_grad = (m >= 0) & (r >= lead) & (r < lead + K_B)
    b = tl.where(first, 0, tl.where(is_grad, seg, seg + 1))
    # gradient blocks last read first
    u = tl.where(first, tk, tl.where(is_grad, K_B - 1 - (r - lead), tl.where(r < lead, r, r - K_B)))
    return b, is_grad, u


@triton.jit
def _finish_sample(b, part_ptr, part_ref_ptr, ref_err_ptr, t_ptr, err_ptr, err_ref_ptr, coef_ptr, sync_ptr,
                   B, K_F, N, beta, HEAD: tl.constexpr, HAS_REF: tl.constexpr, ROUND_FP32: tl.constexpr,
                   RBLOCK: tl.constexpr):
    """Sample b's errors and coef from its K_F partial sums, then release its gradient blocks."""
    cols = tl.arange(0, RBLOCK)
    row = b.to(tl.int64) * K_F
    acc = tl.zeros([RBLOCK], dtype=tl.float64)
    acc_ref = tl.zeros([RBLOCK], dtype=tl.float64)
    for start in range(0, K_F, RBLOCK):
        idx = start + cols
        # .cg: written by other SMs, read past this SM's (incoherent) L1
        acc += tl.load(part_ptr + row + idx, mask=idx < K_F, other=0, cache_modifier=".cg").to(tl.float64)
        if HAS_REF:
            acc_ref += tl.load(part_ref_ptr + row + idx, mask=idx < K_F, other=0,
                               cache_modifier=".cg").to(tl.float64)
    err = tl.sum(acc, axis=0) / N
    if HAS_REF:
        err_ref = tl.sum(acc_ref, axis=0) / N
    else:
        err_ref = err
        if HEAD == 1:
            err_ref = tl.load(ref_err_ptr + b).to(tl.float64)
    if ROUND_FP32:  # as the two-pass fold: the head sees the errors halo_error returns
        err = err.to(tl.float32).to(tl.float64)
        err_ref = err_ref.to(tl.float32).to(tl.float64)
    if HEAD == 1:
        c, _, _, _, sig = _ipa_terms(err, err_ref, tl.load(t_ptr + b).to(tl.float64), beta)
        coef = c * sig / B
    else:
        coef = 1.0 / B + 0.0 * err  # SFT (fp64 like the IPA branch)
    out_ty = coef_ptr.dtype.element_ty
    tl.store(err_ptr + b, err.to(out_ty))
    tl.store(err_ref_ptr + b, err_ref.to(out_ty))
    tl.store(coef_ptr + b, coef.to(out_ty))
    tl.debug_barrier()  # every thread's stores before the release
    tl.atomic_add(_counter(sync_ptr, 2 + b), 1, sem="release")


@triton.jit
def _forward_unit(b, u, pred_ptr, ref_ptr, target_ptr, mask_ptr, part_ptr, part_ref_ptr, ref_err_ptr, t_ptr,
                  err_ptr, err_ref_ptr, coef_ptr, loss_ptr, stats_ptr, sync_ptr, B, C, F, HW, N, skip, mask_frames,
                  lam1, beta, K_F, NBLK_F, HEAD: tl.constexpr, HAS_REF: tl.constexpr, HAS_MASK: tl.constexpr,
                  ACC: tl.constexpr, ROUND_FP32: tl.constexpr, FBLOCK: tl.constexpr, RBLOCK: tl.constexpr,
                  BLOCK_B: tl.constexpr, KEEP: tl.constexpr, DROP: tl.constexpr):
    """Forward block u of sample b: its partial sums; the sample's last block also finishes the
    sample, and the batch's last finished sample writes the loss and stats."""
    plane = b * C * F + (u // NBLK_F).to(tl.int32)
    _, f, offs, in_bounds, base = _plane_block(plane, (u % NBLK_F).to(tl.int32), C, F, HW, FBLOCK)
    sum_pred, sum_ref = _block_sums(pred_ptr, ref_ptr, target_ptr, mask_ptr, b, f, offs, in_bounds, base, skip,
                                    mask_frames, HW, lam1, HAS_REF, HAS_MASK, ACC, KEEP, DROP)
    part = b.to(tl.int64) * K_F + u
    tl.store(part_ptr + part, sum_pred)
    if HAS_REF:
        tl.store(part_ref_ptr + part, sum_ref)
    tl.debug_barrier()
    if tl.atomic_add(_counter(sync_ptr, 2 + b), 1, sem="acq_rel") == K_F - 1:  # the sample's last block
        _finish_sample(b, part_ptr, part_ref_ptr, ref_err_ptr, t_ptr, err_ptr, err_ref_ptr, coef_ptr, sync_ptr,
                       B, K_F, N, beta, HEAD, HAS_REF, ROUND_FP32, RBLOCK)
        if tl.atomic_add(_counter(sync_ptr, 1), 1, sem="acq_rel") == B - 1:  # the last sample: the batch head
            bs = tl.arange(0, BLOCK_B)
            valid = bs < B
            err = tl.load(err_ptr + bs, mask=valid, other=0, cache_modifier=".cg").to(tl.float64)
            err_ref = tl.load(err_ref_ptr + bs, mask=valid, other=0, cache_modifier=".cg").to(tl.float64)
            _batch_head(err, err_ref, t_ptr, bs, valid, B, beta, loss_ptr, stats_ptr, coef_ptr, HEAD, False)


@triton.jit
def _grad_unit(b, u, pred_ptr, target_ptr, mask_ptr, grad_ptr, coef_ptr, C, F, HW, N, skip, mask_frames, lam1,
               NBLK_G, HAS_MASK: tl.constexpr, ACC: tl.constexpr, GBLOCK: tl.constexpr, DROP: tl.constexpr):
    """Gradient block u of sample b (released: its coef is written)."""
    plane = b * C * F + (u // NBLK_G).to(tl.int32)
    _, f, offs, in_bounds, base = _plane_block(plane, (u % NBLK_G).to(tl.int32), C, F, HW, GBLOCK)
    g = tl.load(coef_ptr + b, cache_modifier=".cg").to(ACC)
    _block_grad(g * 2.0 / N, pred_ptr, target_ptr, mask_ptr, grad_ptr, b, f, offs, in_bounds, base, skip,
                mask_frames, HW, lam1, HAS_MASK, ACC, DROP)


@triton.jit(do_not_specialize=["B", "C", "F", "NBLK_F", "NBLK_G", "LEAD"])  # no int 1 turned constexpr
def _halo_step_kernel(
    pred_ptr, ref_ptr, target_ptr, mask_ptr, grad_ptr, part_ptr, part_ref_ptr, ref_err_ptr, t_ptr,
    err_ptr, err_ref_ptr, coef_ptr, loss_ptr, stats_ptr, sync_ptr,
    B, C, F, HW, N, skip, mask_frames, lam1, beta, NBLK_F, NBLK_G, LEAD,
    HEAD: tl.constexpr, HAS_REF: tl.constexpr, HAS_MASK: tl.constexpr, ACC: tl.constexpr,
    ROUND_FP32: tl.constexpr, FBLOCK: tl.constexpr, GBLOCK: tl.constexpr,
    RBLOCK: tl.constexpr, BLOCK_B: tl.constexpr, HINTS: tl.constexpr,
):
    KEEP: tl.constexpr = "evict_last" if HINTS else ""
    DROP: tl.constexpr = "evict_first" if HINTS else ""
    planes = C * F
    K_F = planes * NBLK_F
    K_B = planes * NBLK_G
    total = B.to(tl.int64) * (K_F + K_B)
    released = tl.full([], -1, tl.int32)  # the last sample this program saw released: no second wait on it
    tk = tl.atomic_add(sync_ptr, 1, sem="relaxed").to(tl.int64)
    while tk < total:
        b, is_grad, u = _ticket_work(tk, B, K_F.to(tl.int64), K_B.to(tl.int64), LEAD)
        b = b.to(tl.int32)
        if is_grad:
            if b != released:  # poll with plain loads, then one acquire of what the head released
                state = tl.load(_counter(sync_ptr, 2 + b), volatile=True)
                while state <= K_F:
                    state = tl.load(_counter(sync_ptr, 2 + b), volatile=True)
                tl.atomic_add(_counter(sync_ptr, 2 + b), 0, sem="acquire")
                released = b
            _grad_unit(b, u, pred_ptr, target_ptr, mask_ptr, grad_ptr, coef_ptr, C, F, HW, N, skip, mask_frames,
                       lam1, NBLK_G, HAS_MASK, ACC, GBLOCK, DROP)
        else:
            _forward_unit(b, u, pred_ptr, ref_ptr, target_ptr, mask_ptr, part_ptr, part_ref_ptr, ref_err_ptr, t_ptr,
                          err_ptr, err_ref_ptr, coef_ptr, loss_ptr, stats_ptr, sync_ptr, B, C, F, HW, N, skip,
                          mask_frames, lam1, beta, K_F, NBLK_F, HEAD, HAS_REF, HAS_MASK, ACC, ROUND_FP32, FBLOCK,
                          RBLOCK, BLOCK_B, KEEP, DROP)
        tk = tl.atomic_add(sync_ptr, 1, sem="relaxed").to(tl.int64)


@triton.jit
def _scale_unless_one_kernel(x_ptr, s_ptr, n, BLOCK: tl.constexpr):
    """x *= s in place, unless s == 1 (the usual upstream gradient of a loss): then every program
    returns at once, no bytes moved. Grid-stride over n."""
    s = tl.load(s_ptr).to(tl.float32)
    if s != 1.0:  # NaN != 1: a NaN upstream gradient reaches x
        for start in range(tl.program_id(0).to(tl.int64) * BLOCK, n, tl.num_programs(0) * BLOCK):
            offs = start + tl.arange(0, BLOCK)
            x = tl.load(x_ptr + offs, mask=offs < n)
            tl.store(x_ptr + offs, (x.to(tl.float32) * s).to(x_ptr.dtype.element_ty), mask=offs < n)


def _on_inputs_device(launcher):
    """Triton launches on the *current* CUDA device: make it the inputs' one (all on one device,
    the ops check), so a caller with tensors on cuda:1 and cuda:0 current gets a correct launch,
    not an illegal address."""
    @functools.wraps(launcher)
    def launch(first, *args, **kwargs):
        with torch.cuda.device(first.device) if first.is_cuda else contextlib.nullcontext():
            return launcher(first, *args, **kwargs)
    return launch


def _launch_config(hw: int, kernel: str):
    """(BLOCK, num_warps) for the forward ("fwd") or backward ("bwd") kernel on planes of `hw`
    elements. Swept by `benchmarks/tune_halo.py` on an H200 at 720p-b8 (benchmarks/NOTES.md): the
    forward, a reduction, is fastest as many small programs (1024 x 4 warps: 93% of copy bandwidth,
    against 80% at 4096 x 8); the pointwise backward as large ones (8192 x 16 warps: 95%)."""
    if kernel == "fwd":
        return min(1024, triton.next_power_of_2(max(hw, 16))), 4
    block = min(8192, triton.next_power_of_2(max(hw, 16)))
    return block, 16 if block >= 8192 else 8 if block >= 2048 else 4


def _acc_dtype(dtype: torch.dtype):
    return (tl.float64, torch.float64) if dtype == torch.float64 else (tl.float32, torch.float32)


def _partials(pred, ref, target, mask, hand_weight, skip_frames):
    """Launch the forward kernel: [B, P] partial sums for pred (and ref), P = C * F * blocks."""
    B, C, F, H, W = pred.shape
    hw = H * W
    block, num_warps = _launch_config(hw, "fwd")
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
    return part_pred.view(B, -1), (part_ref.view(B, -1) if ref is not None else None), C * F * hw


def _fold(part, part_ref, *, head, n, acc_torch, ref_error=None, t=None, beta=0.0, n_stats=1):
    """Launch `_fold_kernel`; the outputs the head mode does not write are `part` stand-ins."""
    B, P = part.shape
    block_b = triton.next_power_of_2(B)
    dummy = part

    def out(shape, wanted=True):
        return torch.empty(shape, device=part.device, dtype=acc_torch) if wanted else dummy

    err = out(B, head == HEAD_NONE)
    err_ref = out(B, head == HEAD_NONE and part_ref is not None)
    loss, stats, coef = out((), head != HEAD_NONE), out(n_stats, head != HEAD_NONE), out(B, head != HEAD_NONE)
    _fold_kernel[(1,)](
        part, part_ref if part_ref is not None else dummy, ref_error if ref_error is not None else dummy,
        t if t is not None else dummy, err, err_ref, loss, stats, coef,
        B, P, n, float(beta),
        HEAD=head, REF_PARTS=part_ref is not None, ROUND_FP32=acc_torch == torch.float32,
        BLOCK_B=block_b, BLOCK_P=max(16, FOLD_TILE // block_b), num_warps=FOLD_WARPS,
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
    part, part_ref, n = _partials(pred, ref, target, mask, hand_weight, skip_frames)
    acc_torch = _acc_dtype(pred.dtype)[1]
    if part.shape[0] > MAX_FOLD_BATCH:
        return _fold_in_torch(part, n, acc_torch), (_fold_in_torch(part_ref, n, acc_torch) if ref is not None else None)
    err, err_ref, *_ = _fold(part, part_ref, head=HEAD_NONE, n=n, acc_torch=acc_torch)
    return err, (err_ref if ref is not None else None)


@_on_inputs_device
def halo_loss_forward(pred, ref, target, mask, timesteps, ref_error, objective: str, beta: float,
                      hand_weight: float, skip_frames: int, n_stats: int):
    """(loss, stats [n_stats], coef [B]) for objective "ipa" or "sft" in two launches, or None when
    the batch is too large for the one-program fold (the caller then runs the head in torch)."""
    if pred.shape[0] > MAX_FOLD_BATCH:
        return None
    part, part_ref, n = _partials(pred, ref, target, mask, hand_weight, skip_frames)
    head = HEAD_IPA if objective == "ipa" else HEAD_SFT
    _, _, loss, stats, coef = _fold(part, part_ref, head=head, n=n, acc_torch=_acc_dtype(pred.dtype)[1],
                                    ref_error=ref_error, t=timesteps, beta=beta, n_stats=n_stats)
    return loss, stats, coef


# (FBLOCK, GBLOCK, num_warps, programs per SM, LEAD, HINTS) of the step kernel, from
# benchmarks/tune_halo.py on an H200 at 720p-b8 (benchmarks/NOTES.md).
STEP_CONFIG = (4096, 8192, 4, 4, 512, True)
INTERPRETER_PROGRAMS = 2  # CPU tensors under TRITON_INTERPRET=1: programs run one after another


def _resident_programs(device, per_sm):
    if device.type != "cuda":
        return INTERPRETER_PROGRAMS
    return torch.cuda.get_device_properties(device).multi_processor_count * per_sm


@_on_inputs_device
def halo_loss_step(pred, ref, target, mask, timesteps, ref_error, objective: str, beta: float,
                   hand_weight: float, skip_frames: int, n_stats: int):
    """(loss, stats [n_stats], coef [B], grad) for objective "ipa" or "sft" in one persistent
    launch (plus the zeroing of its counters): grad = dL/d pred in pred's dtype. None when the batch
    is too large for the one-program head (the caller then takes the two-pass path)."""
    B, C, F, H, W = pred.shape
    if B > MAX_FOLD_BATCH:
        return None
    hw = H * W
    fblock, gblock, num_warps, per_sm, lead, hints = STEP_CONFIG
    fblock = min(fblock, triton.next_power_of_2(max(hw, 16)))
    gblock = min(gblock, triton.next_power_of_2(max(hw, 16)))
    nblk_f, nblk_g = triton.cdiv(hw, fblock), triton.cdiv(hw, gblock)
    acc_tl, acc_torch = _acc_dtype(pred.dtype)
    dev = pred.device

    def new(*shape):
        return torch.empty(shape, device=dev, dtype=acc_torch)

    part, part_ref = new(B, C * F * nblk_f), (new(B, C * F * nblk_f) if ref is not None else None)
    err, err_ref, coef, loss, stats = new(B), new(B), new(B), new(), new(n_stats)
    grad = torch.empty_like(pred)
    sync = torch.zeros((2 + B) * SYNC_STRIDE, device=dev, dtype=torch.int32)
    tickets = B * C * F * (nblk_f + nblk_g)
    grid = (min(tickets, _resident_programs(dev, per_sm)),)
    _halo_step_kernel[grid](
        pred, ref if ref is not None else pred, target, mask if mask is not None else pred, grad,
        part, part_ref if part_ref is not None else part, ref_error if ref_error is not None else err,
        timesteps if timesteps is not None else err, err, err_ref, coef, loss, stats, sync,
        B, C, F, hw, C * F * hw, skip_frames, F - skip_frames, float(hand_weight) - 1.0, float(beta),
        nblk_f, nblk_g, lead,
        HEAD=HEAD_IPA if objective == "ipa" else HEAD_SFT, HAS_REF=ref is not None, HAS_MASK=mask is not None,
        ACC=acc_tl, ROUND_FP32=acc_torch == torch.float32, FBLOCK=fblock, GBLOCK=gblock,
        RBLOCK=1024, BLOCK_B=triton.next_power_of_2(B), HINTS=hints, num_warps=num_warps,
    )
    return loss, stats, coef, grad


SCALE_BLOCK = 4096


@_on_inputs_device
def scale_unless_one(x, s):
    """x *= s in place (s: a 0-dim tensor), moving no bytes when s == 1: how a step's gradient,
    computed for an upstream gradient of 1, takes the one autograd hands its backward."""
    grid = (min(triton.cdiv(x.numel(), SCALE_BLOCK), _resident_programs(x.device, 2)),)
    _scale_unless_one_kernel[grid](x, s, x.numel(), BLOCK=SCALE_BLOCK, num_warps=8)


@_on_inputs_device
def halo_backward(grad_err, pred, target, mask, hand_weight: float, skip_frames: int, grad_scale=None):
    """Gradient of `sum_b grad_scale * grad_err[b] * err[b]` with respect to `pred`, in pred's
    dtype; `grad_scale` is a 0-dim tensor or None (1)."""
    B, C, F, H, W = pred.shape
    hw = H * W
    block, num_warps = _launch_config(hw, "bwd")
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
