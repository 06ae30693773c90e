"""IPA, SFT and DPO losses on every backend against `ipa.ops.reference`, plus the IPA identities."""

import math

import pytest
import torch

from ipa.ops import (FlowDPOLoss, FlowIPALoss, FlowSFTLoss, flow_dpo_loss, flow_ipa_loss,
                     flow_sft_loss, halo_error, halo_errors, reference)

from .test_halo_error import BACKENDS, _need, make_inputs

SHAPE = (4, 3, 5, 6, 7)


def timesteps(b, seed=1):
    return torch.rand(b, generator=torch.Generator().manual_seed(seed))


def _leaf(x):
    return x.detach().clone().requires_grad_()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("beta", [600.0, 5.0])
def test_ipa_matches_reference(backend, beta):
    _need(backend)
    pred, ref, target, m = make_inputs(SHAPE)
    ref = pred + 0.05 * ref  # a close reference, so logits are O(1) and gradients are not saturated
    t = timesteps(SHAPE[0])
    p_ours, p_ref = _leaf(pred), _leaf(pred.double())
    loss, metrics = flow_ipa_loss(p_ours, target, t, m, ref_pred=ref, beta=beta, backend=backend)
    want = reference.flow_ipa_loss(p_ref, target.double(), t.double(), m.double(), ref_pred=ref.double(), beta=beta)
    torch.testing.assert_close(loss.double(), want, rtol=2e-5, atol=1e-7)
    loss.backward()
    want.backward()
    # fp32 logits carry the cancellation of err_ref - err: compare against the gradient's scale.
    torch.testing.assert_close(p_ours.grad.double(), p_ref.grad, rtol=1e-4, atol=1e-5 * p_ref.grad.abs().max().item())

    err = reference.halo_error(pred.double(), target.double(), m.double())
    err_ref = reference.halo_error(ref.double(), target.double(), m.double())
    torch.testing.assert_close(metrics["model_error"].double(), err.mean(), rtol=1e-5, atol=0)
    torch.testing.assert_close(metrics["reference_error"].double(), err_ref.mean(), rtol=1e-5, atol=0)
    torch.testing.assert_close(metrics["ipa_gap"].double(), (err_ref - err).mean(), rtol=1e-4, atol=1e-7)
    assert metrics["implicit_accuracy"].item() == (err_ref > err).double().mean().item()
    assert not any(v.requires_grad for v in metrics.values())


@pytest.mark.parametrize("backend", BACKENDS)
def test_upstream_gradient_is_applied_inside_the_backward(backend):
    """A loss's upstream gradient (here -2.5: DeepSpeed's accumulation divides the loss too) reaches
    pred and target; on Triton it is applied in the backward kernel, not by a launch of its own."""
    _need(backend)
    pred, ref, target, m = make_inputs(SHAPE)
    ref = pred + 0.05 * ref
    t = timesteps(SHAPE[0])
    p_ours, t_ours, p_ref, t_ref = _leaf(pred), _leaf(target), _leaf(pred.double()), _leaf(target.double())
    loss, _ = flow_ipa_loss(p_ours, t_ours, t, m, ref_pred=ref, backend=backend)
    want = reference.flow_ipa_loss(p_ref, t_ref, t.double(), m.double(), ref_pred=ref.double())
    if backend == "triton":  # a training step's case: only pred needs a gradient
        plain, _ = flow_ipa_loss(_leaf(pred), target, t, m, ref_pred=ref, backend=backend)
        scaled = -2.5 * plain
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            scaled.backward()
        counts = {e.key: e.count for e in prof.key_averages()}
        assert counts.get("ipa::halo_error_bwd") == 1
        assert counts.get("aten::mul") == 1  # the `-2.5 *` node's own backward, nothing of ours
    (-2.5 * loss).backward()
    (-2.5 * want).backward()
    for ours, ref_grad in ((p_ours.grad, p_ref.grad), (t_ours.grad, t_ref.grad)):
        torch.testing.assert_close(ours.double(), ref_grad, rtol=1e-4, atol=1e-5 * ref_grad.abs().max().item())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_step_zero_is_exactly_log2(backend, dtype):
    """Policy == reference (step 0): every logit is 0 and the loss is log 2 to the last bit."""
    _need(backend)
    pred, _, target, m = make_inputs(SHAPE, dtype=dtype)
    t = timesteps(SHAPE[0])
    loss, metrics = flow_ipa_loss(pred, target, t, m, ref_pred=pred.clone(), backend=backend)
    assert loss.item() == torch.tensor(math.log(2), dtype=torch.float32).item()
    assert metrics["ipa_gap"].item() == 0.0 and metrics["implicit_accuracy"].item() == 0.0
    # Same with the reference error precomputed by the same kernel.
    ref_error = halo_error(pred, target, m, backend=backend)
    loss2, _ = flow_ipa_loss(pred, target, t, m, ref_error=ref_error, backend=backend)
    assert loss2.item() == loss.item()


@pytest.mark.parametrize("backend", BACKENDS)
def test_precomputed_reference_equals_online(backend):
    _need(backend)
    pred, ref, target, m = make_inputs(SHAPE)
    t = timesteps(SHAPE[0])
    online, _ = flow_ipa_loss(pred, target, t, m, ref_pred=ref, backend=backend)
    pre = halo_error(ref, target, m, backend=backend)
    offline, _ = flow_ipa_loss(pred, target, t, m, ref_error=pre, backend=backend)
    assert online.item() == offline.item()


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_and_expanded_vectors_are_read_right(backend):
    """timesteps / ref_error as strided or expanded (stride 0) views, and an expanded upstream
    gradient (from `.sum()`): the kernels index [B] vectors with unit stride, so the ops must
    hand them over contiguous."""
    _need(backend)
    pred, ref, target, m = make_inputs(SHAPE)
    B = SHAPE[0]
    t = timesteps(2 * B)[::2]
    ref_error = halo_error(ref, target, m, backend="torch")
    ref_error_strided = torch.stack([ref_error, torch.zeros(B)], dim=1)[:, 0]
    assert t.stride() == (2,) and ref_error_strided.stride() == (2,)
    want, _ = flow_ipa_loss(pred, target, t.contiguous(), m, ref_error=ref_error, beta=5.0, backend="torch")
    got, _ = flow_ipa_loss(pred, target, t, m, ref_error=ref_error_strided, beta=5.0, backend=backend)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)
    t_one = torch.tensor([0.3]).expand(B)
    want, _ = flow_ipa_loss(pred, target, t_one.contiguous(), m, ref_pred=ref, beta=5.0, backend="torch")
    got, _ = flow_ipa_loss(pred, target, t_one, m, ref_pred=ref, beta=5.0, backend=backend)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)
    p_ours, p_want = _leaf(pred), _leaf(pred)
    halo_error(p_ours, target, m, backend=backend).sum().backward()  # grad_err is ones expanded
    halo_error(p_want, target, m, backend="torch").sum().backward()
    torch.testing.assert_close(p_ours.grad, p_want.grad, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ipa_gradient_sign_rewards_beating_reference(backend):
    """A gradient step on the policy lowers its error below the reference's: gap turns positive."""
    _need(backend)
    pred, _, target, m = make_inputs(SHAPE)
    p = _leaf(pred)
    t = torch.zeros(SHAPE[0])
    loss, _ = flow_ipa_loss(p, target, t, m, ref_pred=pred, beta=1.0, backend=backend)
    loss.backward()
    with torch.no_grad():
        p2 = p - 0.5 * p.grad / p.grad.abs().max()
    _, metrics = flow_ipa_loss(p2, target, t, m, ref_pred=pred, beta=1.0, backend=backend)
    assert metrics["ipa_gap"].item() > 0 and metrics["implicit_accuracy"].item() == 1.0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e4], ids=["small", "unit", "saturated"])
def test_ipa_head_and_metrics_match_reference(backend, scale):
    """The loss head on B errors (in the C++ call on CPU), from tiny to saturated logits: loss,
    every metric and the gradient as `ipa.ops.reference` in float64, never inf or NaN."""
    _need(backend)
    pred, ref, target, m = make_inputs(SHAPE, seed=3)
    ref = pred + 0.3 * ref
    ref[0] = target[0]  # sample 0: the reference is exact, the policy loses by far
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])  # t = 1 zeroes the weight (1 - t)^2
    beta = 600.0 * scale
    p, q = _leaf(pred), _leaf(pred.double())
    loss, metrics = flow_ipa_loss(p, target, t, m, ref_pred=ref, beta=beta, backend=backend)
    want = reference.flow_ipa_loss(q, target.double(), t.double(), m.double(), ref_pred=ref.double(), beta=beta)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-7)
    err = reference.halo_error(pred.double(), target.double(), m.double())
    err_ref = reference.halo_error(ref.double(), target.double(), m.double())
    gap, logit = err_ref - err, beta / 2 * (1 - t.double()) ** 2 * (err_ref - err)
    expected = {"ipa_gap": gap.mean(), "model_error": err.mean(), "reference_error": err_ref.mean(),
                "implicit_accuracy": (gap > 0).double().mean(), "logit": logit.mean()}
    assert set(metrics) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(metrics[name].double(), value, rtol=1e-4, atol=1e-6, msg=name)
    loss.backward()
    want.backward()
    assert torch.isfinite(p.grad).all()
    torch.testing.assert_close(p.grad.double(), q.grad, rtol=1e-4, atol=1e-5 * q.grad.abs().max().item())


@pytest.mark.parametrize("backend", BACKENDS)
def test_ipa_loss_gradcheck_fp64(backend):
    """float64 in, float64 head out: the whole loss (errors, head, backward) passes gradcheck."""
    _need(backend)
    pred, ref, target, m = (x.double() for x in make_inputs((2, 1, 2, 2, 3)))
    t = torch.tensor([0.2, 0.7], dtype=torch.float64)
    # in target too: with ref_pred it reaches the loss through both errors
    p, tgt = _leaf(pred), _leaf(target)
    for kw in (dict(ref_pred=pred + 0.1 * ref), dict(ref_error=torch.tensor([0.5, 3.0], dtype=torch.float64))):
        fn = lambda x, y: flow_ipa_loss(x, y, t, m, beta=2.0, backend=backend, **kw)[0]  # noqa: E731
        assert fn(p, tgt).dtype == torch.float64
        assert torch.autograd.gradcheck(fn, (p, tgt), eps=1e-6, atol=1e-7)
    sft = lambda x, y: flow_sft_loss(x, y, m, backend=backend)[0]  # noqa: E731
    assert torch.autograd.gradcheck(sft, (p, tgt), eps=1e-6, atol=1e-7)



@pytest.mark.parametrize("target_needs_grad", [False, True])
def test_reference_prediction_kept_for_backward_only_for_a_target_gradient(target_needs_grad):
    """A training step's target is data: the frozen prediction (a full latent) must not stay alive
    until the backward. Only a target that needs a gradient keeps it (its error depends on target)."""
    pred, ref, target, m = make_inputs(SHAPE)
    saved = []

    def pack(x):
        saved.append(x.data_ptr())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        flow_ipa_loss(_leaf(pred), target.requires_grad_(target_needs_grad), timesteps(SHAPE[0]), m,
                      ref_pred=ref, backend="torch")
        halo_errors(_leaf(pred), target, m, ref_pred=ref, backend="torch")
    assert saved.count(ref.data_ptr()) == (2 if target_needs_grad else 0)


def test_triton_batch_beyond_the_fold_kernel(monkeypatch):
    """Batches over MAX_FOLD_BATCH fold their partials and run the head in torch: same results."""
    _need("triton")
    from ipa.kernels import halo

    monkeypatch.setattr(halo, "MAX_FOLD_BATCH", 4)  # 4096 in use: as many interpreted programs is slow
    B = halo.MAX_FOLD_BATCH + 1
    pred, ref, target, m = make_inputs((B, 1, 2, 1, 3), seed=5)
    t = timesteps(B)
    loss, metrics = flow_ipa_loss(_leaf(pred), target, t, m, ref_pred=ref, beta=5.0, backend="triton")
    want, want_metrics = flow_ipa_loss(_leaf(pred), target, t, m, ref_pred=ref, beta=5.0, backend="torch")
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=0)
    for name in want_metrics:
        torch.testing.assert_close(metrics[name], want_metrics[name], rtol=1e-5, atol=1e-7, msg=name)


def test_triton_fold_counter_is_armed_by_the_forward_and_left_zeroed(monkeypatch):
    """The fold's last program (by an atomic count per call) writes the batch's loss and metrics.
    The count lives in an uninitialized int32 that the forward kernel zeroes: hand it a poisoned
    one, as a reused allocation may be, and the loss must still be the reference's; the fold
    leaves the count at zero, so the fold alone can run again on the same partials."""
    _need("triton")
    from ipa.kernels import halo

    empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, dtype=None, **k: (
        empty(*a, dtype=dtype, **k).fill_(77) if dtype == torch.int32 else empty(*a, dtype=dtype, **k)))
    shape = (4, 2, 3, 2, 5)
    pred, ref, target, m = make_inputs(shape, seed=8)
    t = timesteps(shape[0])
    loss, _ = flow_ipa_loss(pred, target, t, m, ref_pred=ref, beta=5.0, backend="triton")
    want = reference.flow_ipa_loss(pred.double(), target.double(), t.double(), m.double(), ref_pred=ref.double(), beta=5.0)
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-7)

    part, part_ref, n, sync = halo._partials(pred, ref, target, m, 10.0, 1)
    assert sync.item() == 0
    runs = [halo._fold(part, part_ref, sync, head=halo.HEAD_IPA, n=n, acc_torch=torch.float32, t=t, beta=5.0,
                       n_stats=5) for _ in range(2)]
    assert sync.item() == 0
    for first, second in zip(runs[0][2:], runs[1][2:]):  # loss, stats, coef
        assert torch.equal(first, second)


def test_triton_fold_over_several_chunks_of_partials(monkeypatch):
    """Each sample's fold program reads its P partials in chunks of BLOCK_P = FOLD_TILE (at least
    16): with the tile at 16 (the same loop as 2048's, on a small shape), 35 partials per sample take
    three chunks, for the errors of policy and reference and the IPA and SFT heads alike."""
    _need("triton")
    from ipa.kernels import halo

    monkeypatch.setattr(halo, "FOLD_TILE", 16)
    shape = (3, 5, 7, 3, 5)  # P = C x F x 1 block = 35
    pred, ref, target, m = make_inputs(shape, seed=6)
    ref = pred + 0.1 * ref
    t = timesteps(shape[0])
    err = reference.halo_error(pred.double(), target.double(), m.double())
    err_ref = reference.halo_error(ref.double(), target.double(), m.double())
    loss, metrics = flow_ipa_loss(pred, target, t, m, ref_pred=ref, beta=5.0, backend="triton")
    want = reference.flow_ipa_loss(pred.double(), target.double(), t.double(), m.double(), ref_pred=ref.double(), beta=5.0)
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(metrics["model_error"].double(), err.mean(), rtol=1e-5, atol=0)
    torch.testing.assert_close(metrics["reference_error"].double(), err_ref.mean(), rtol=1e-5, atol=0)
    torch.testing.assert_close(metrics["ipa_gap"].double(), (err_ref - err).mean(), rtol=1e-4, atol=1e-6)
    loss, metrics = flow_sft_loss(pred, target, m, backend="triton")
    torch.testing.assert_close(loss.double(), err.mean(), rtol=1e-5, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sft_matches_reference(backend):
    _need(backend)
    pred, _, target, m = make_inputs(SHAPE)
    p, q = _leaf(pred), _leaf(pred.double())
    loss, metrics = flow_sft_loss(p, target, m, hand_weight=3.0, backend=backend)
    want = reference.flow_sft_loss(q, target.double(), m.double(), hand_weight=3.0)
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=0)
    loss.backward()
    want.backward()
    torch.testing.assert_close(p.grad.double(), q.grad, rtol=1e-5, atol=1e-10)
    assert metrics["model_error"].item() == loss.item()


@pytest.mark.parametrize("backend", BACKENDS)
def test_dpo_matches_reference(backend):
    _need(backend)
    pw, rw, tw, mw = make_inputs(SHAPE, seed=1)
    pl, rl, tl, ml = make_inputs(SHAPE, seed=2)
    rw, rl = pw + 0.05 * rw, pl + 0.05 * rl
    a, b, ta, tb = _leaf(pw), _leaf(pl), _leaf(tw), _leaf(tl)  # targets reach both errors of a side
    loss, metrics = flow_dpo_loss(a, b, ta, tb, mw, ml, ref_pred_w=rw, ref_pred_l=rl, beta=50.0, backend=backend)
    a64, b64, ta64, tb64 = (_leaf(x.double()) for x in (pw, pl, tw, tl))
    want = reference.flow_dpo_loss(a64, b64, ta64, tb64, mw.double(), ml.double(),
                                   ref_pred_w=rw.double(), ref_pred_l=rl.double(), beta=50.0)
    torch.testing.assert_close(loss.double(), want, rtol=2e-5, atol=1e-7)
    loss.backward()
    want.backward()
    torch.testing.assert_close(a.grad.double(), a64.grad, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(b.grad.double(), b64.grad, rtol=1e-4, atol=1e-9)
    for got, ref_grad in ((ta.grad, ta64.grad), (tb.grad, tb64.grad)):  # pred - ref cancels: scale atol
        torch.testing.assert_close(got.double(), ref_grad, rtol=1e-4, atol=1e-5 * ref_grad.abs().max().item())
    e = {name: reference.halo_error(p.double(), t.double(), mask.double())
         for name, p, t, mask in (("w", pw, tw, mw), ("l", pl, tl, ml), ("ref_w", rw, tw, mw), ("ref_l", rl, tl, ml))}
    margin = (e["ref_w"] - e["w"]) - (e["ref_l"] - e["l"])
    assert (margin > 0).any() and (margin < 0).any()  # both outcomes occur, so accuracy is tested
    expected = {"reward_margin": margin.mean(), "implicit_accuracy": (margin > 0).double().mean(),
                "model_error_w": e["w"].mean(), "model_error_l": e["l"].mean(),
                "reference_error_w": e["ref_w"].mean(), "reference_error_l": e["ref_l"].mean()}
    assert set(metrics) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(metrics[name].double(), value, rtol=1e-4, atol=1e-6, msg=name)
    # Precomputed reference errors give the same loss.
    ew, el = halo_error(rw, tw, mw, backend=backend), halo_error(rl, tl, ml, backend=backend)
    loss2, _ = flow_dpo_loss(pw, pl, tw, tl, mw, ml, ref_error_w=ew, ref_error_l=el, beta=50.0, backend=backend)
    assert loss2.item() == loss.item()


def test_nan_anywhere_gives_nan_loss():
    pred, ref, target, m = make_inputs(SHAPE)
    t = timesteps(SHAPE[0])
    cases = {"model_pred": pred, "ref_pred": ref, "target": target, "hand_mask": m, "timesteps": t}
    for name, tensor in cases.items():
        tensor = tensor.clone()
        tensor.view(-1)[3] = float("nan")
        kw = dict(model_pred=pred, ref_pred=ref, target=target, hand_mask=m, timesteps=t)
        kw[name] = tensor
        loss, _ = flow_ipa_loss(kw["model_pred"], kw["target"], kw["timesteps"], kw["hand_mask"],
                                ref_pred=kw["ref_pred"])
        assert torch.isnan(loss), name
    ref_error = torch.tensor([0.1, float("nan"), 0.2, 0.3])
    assert torch.isnan(flow_ipa_loss(pred, target, t, m, ref_error=ref_error)[0])


def test_modules_equal_functional():
    pred, ref, target, m = make_inputs(SHAPE)
    t = timesteps(SHAPE[0])
    ipa = FlowIPALoss(beta=100.0, hand_weight=5.0)
    assert "beta=100.0" in repr(ipa)
    assert ipa(pred, target, t, m, ref_pred=ref)[0].item() == \
        flow_ipa_loss(pred, target, t, m, ref_pred=ref, beta=100.0, hand_weight=5.0)[0].item()
    assert FlowSFTLoss(hand_weight=1.0)(pred, target, m)[0].item() == \
        flow_sft_loss(pred, target, None)[0].item()
    dpo = FlowDPOLoss(beta=10.0)
    assert dpo(pred, ref, target, target, m, m, ref_pred_w=ref, ref_pred_l=pred)[0].item() == \
        flow_dpo_loss(pred, ref, target, target, m, m, ref_pred_w=ref, ref_pred_l=pred, beta=10.0)[0].item()
