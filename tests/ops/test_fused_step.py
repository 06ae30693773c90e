"""The one-pass Triton loss step (`ipa::halo_loss_step`, kernels/halo.py) against the two-pass ops.

A training step on Triton (pred needs a gradient, target does not, not under torch.compile) gets
its gradient from the forward's persistent kernel; these tests pin that it computes what the
two-pass ops compute, for each ticket order (lead) and block size, that it runs only where it applies,
and how it takes an upstream gradient. Under TRITON_INTERPRET=1 the programs run one after
another, so the kernel's cross-program waits are exercised on a GPU (tests/ops/test_cuda.py).
"""

import math

import pytest
import torch

from ipa.ops import flow_ipa_loss, flow_sft_loss, halo_loss

from .test_halo_error import ODD, _need, make_inputs

# (FBLOCK, GBLOCK, num_warps, programs per SM, LEAD, HINTS): the shipped one, and small blocks (7
# forward and 4 gradient blocks per 13 x 31 plane) with no lead, a lead of 5 blocks, and a lead
# past a whole sample's forward blocks (it is capped there).
CONFIGS = {"shipped": None, "no-lead": (64, 128, 4, 2, 0, True), "lead": (64, 128, 4, 2, 5, False),
           "lead-past-sample": (64, 128, 4, 2, 10**6, True)}
OBJECTIVES = ("ipa-ref-pred", "ipa-ref-error", "sft")


@pytest.fixture(params=list(CONFIGS))
def step_config(request, monkeypatch):
    _need("triton")
    from ipa.kernels import halo
    if CONFIGS[request.param] is not None:
        monkeypatch.setattr(halo, "STEP_CONFIG", CONFIGS[request.param])
    return request.param


def _loss(objective, pred, target, m, skip=1, beta=5.0):
    """One of the fused losses on pred (its reference a small perturbation, its ref_error from it)."""
    ref = (target + 0.9 * (pred.detach() - target)).to(pred.dtype)
    t = torch.rand(pred.shape[0], generator=torch.Generator().manual_seed(3))
    if objective == "sft":
        return flow_sft_loss(pred, target, m, skip_frames=skip, backend="triton")
    if objective == "ipa-ref-pred":
        return flow_ipa_loss(pred, target, t, m, ref_pred=ref, beta=beta, skip_frames=skip, backend="triton")
    ref_error = ((ref.double() - target.double()) ** 2).mean(dim=(1, 2, 3, 4)).float()
    return flow_ipa_loss(pred, target, t, m, ref_error=ref_error, beta=beta, skip_frames=skip, backend="triton")


def _run(objective, pred, target, m, fused, skip=1, monkeypatch=None):
    """(loss, metrics, grad, the op names that ran) with the one-pass step on or off."""
    monkeypatch.setattr(halo_loss, "FUSED_STEP", fused)
    p = pred.detach().clone().requires_grad_()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        loss, metrics = _loss(objective, p, target, m, skip)
        loss.backward()
    return loss.detach(), metrics, p.grad, {e.key for e in prof.key_averages()}


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("dtype, mask, skip", [(torch.float32, "float", 1), (torch.bfloat16, "bool", 0)])
def test_step_matches_two_pass(step_config, objective, dtype, mask, skip, monkeypatch):
    pred, _, target, m = make_inputs(ODD, dtype=dtype, mask=mask, skip=skip)
    loss, metrics, grad, ops = _run(objective, pred, target, m, True, skip, monkeypatch)
    want_loss, want_metrics, want_grad, want_ops = _run(objective, pred, target, m, False, skip, monkeypatch)
    assert "ipa::halo_loss_step" in ops and "ipa::halo_error_bwd" not in ops
    assert "ipa::halo_loss_step" not in want_ops and "ipa::halo_error_bwd" in want_ops
    # Partial sums over other block sizes: errors may differ in their last fp32 bit, nothing more.
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=0)
    for name, value in want_metrics.items():
        torch.testing.assert_close(metrics[name], value, rtol=1e-5, atol=1e-6)
    assert grad.dtype == dtype
    scale = want_grad.abs().max().item()
    tol = 1e-5 if dtype == torch.float32 else 8e-3  # bf16: a rounding flip is one ulp
    torch.testing.assert_close(grad.float(), want_grad.float(), rtol=tol, atol=tol * scale)


def test_step_without_mask_and_step_zero_log2(step_config, monkeypatch):
    pred, _, target, _ = make_inputs(ODD)
    _, _, grad, _ = _run("sft", pred, target, None, True, monkeypatch=monkeypatch)
    _, _, want, _ = _run("sft", pred, target, None, False, monkeypatch=monkeypatch)
    torch.testing.assert_close(grad, want, rtol=1e-5, atol=1e-9)
    p = pred.clone().requires_grad_()
    loss, metrics = flow_ipa_loss(p, target, torch.rand(ODD[0]), None, ref_pred=pred, backend="triton")
    assert loss.item() == torch.tensor(math.log(2), dtype=torch.float32).item()
    assert metrics["ipa_gap"].item() == 0.0


def test_step_runs_only_where_it_applies():
    """A training step's case only: not under no_grad, not when target needs a gradient too."""
    _need("triton")
    pred, ref, target, m = make_inputs(ODD)
    t = torch.rand(ODD[0])

    def ops_of(p, tgt):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            flow_ipa_loss(p, tgt, t, m, ref_pred=ref, backend="triton")
        return {e.key for e in prof.key_averages()}

    assert "ipa::halo_loss_step" in ops_of(pred.clone().requires_grad_(), target)
    with torch.no_grad():
        assert "ipa::halo_loss_step" not in ops_of(pred.clone().requires_grad_(), target)
    assert "ipa::halo_loss_step" not in ops_of(pred, target)
    both = ops_of(pred.clone().requires_grad_(), target.clone().requires_grad_())
    assert "ipa::halo_loss_step" not in both and "ipa::halo_loss_fwd" in both


def test_upstream_gradient_one_nan_and_second_backward():
    _need("triton")
    pred, ref, target, m = make_inputs(ODD)
    t = torch.rand(ODD[0])
    kw = dict(ref_pred=ref, backend="triton")
    step = torch.ops.ipa.halo_loss_step(pred, ref, target, m, t, None, "ipa", 600.0, 10.0, 1, "triton")
    p = pred.clone().requires_grad_()
    flow_ipa_loss(p, target, t, m, **kw)[0].backward()  # upstream 1: the step's gradient as it is
    assert torch.equal(p.grad, step[3])
    p = pred.clone().requires_grad_()
    (flow_ipa_loss(p, target, t, m, **kw)[0] * float("nan")).backward()
    assert torch.isnan(p.grad).all()
    p = pred.clone().requires_grad_()
    loss, _ = flow_ipa_loss(p, target, t, m, **kw)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="already handed to a first backward"):
        loss.backward()


def test_batches_past_the_one_program_head_take_two_passes(monkeypatch):
    _need("triton")
    from ipa.kernels import halo
    pred, _, target, m = make_inputs(ODD)
    _, _, want, _ = _run("ipa-ref-pred", pred, target, m, False, monkeypatch=monkeypatch)
    monkeypatch.setattr(halo, "MAX_FOLD_BATCH", ODD[0] - 1)
    assert halo.halo_loss_step(pred, None, target, None, None, None, "sft", 1.0, 10.0, 1, 1) is None
    _, _, grad, ops = _run("ipa-ref-pred", pred, target, m, True, monkeypatch=monkeypatch)
    assert "ipa::halo_loss_step" in ops  # the op, composed of the two passes inside
    torch.testing.assert_close(grad, want, rtol=1e-5, atol=1e-9)
