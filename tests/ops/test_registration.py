"""torch.library registration (opcheck, torch.compile), backend choice, bad input, isolation."""

import os
import platform
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import ipa.ops._backends as backends
from ipa.ops import (FlowDPOLoss, FlowIPALoss, FlowSFTLoss, HaloError, available_backends, flow_dpo_loss,
                     flow_ipa_loss, halo_error, reference)

from .test_halo_error import BACKENDS, _need, make_inputs

SHAPE = (2, 3, 4, 5, 7)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_ref", [False, True])
def test_opcheck(backend, with_ref):
    _need(backend)
    pred, ref, target, m = make_inputs(SHAPE, mask="bool")
    pred.requires_grad_()
    args = (pred, ref if with_ref else None, target, m, 10.0, 1, backend)
    torch.library.opcheck(torch.ops.ipa.halo_error_fwd.default, args)
    grad = torch.rand(SHAPE[0])
    torch.library.opcheck(torch.ops.ipa.halo_error_bwd.default, (grad, pred.detach(), target, m, 10.0, 1, backend))
    scale = torch.tensor(-2.5)  # a loss's upstream gradient, applied inside the backward
    torch.library.opcheck(torch.ops.ipa.halo_error_bwd.default,
                          (grad, pred.detach(), target, m, 10.0, 1, backend, scale))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("objective", ["ipa-ref-pred", "ipa-ref-error", "sft"])
def test_opcheck_loss(backend, objective):
    """The op `flow_ipa_loss` / `flow_sft_loss` call: fake kernel, autograd, schema."""
    _need(backend)
    pred, ref, target, m = make_inputs(SHAPE, mask="bool")
    pred.requires_grad_()
    t, ref_error = torch.rand(SHAPE[0]), torch.rand(SHAPE[0])
    args = {"ipa-ref-pred": (pred, ref, target, m, t, None, "ipa"),
            "ipa-ref-error": (pred, None, target, m, t, ref_error, "ipa"),
            "sft": (pred, None, target, m, None, None, "sft")}[objective]
    torch.library.opcheck(torch.ops.ipa.halo_loss_fwd.default, (*args, 600.0, 10.0, 1, backend))


@pytest.mark.slow
def test_torch_compile_fullgraph_no_graph_break():
    """The whole IPA loss, forward and backward, compiles as one graph around the custom ops."""
    _need("cpp")
    pred, ref, target, m = make_inputs(SHAPE)
    t = torch.rand(SHAPE[0])

    def step(p, r, tgt, ts, mask):
        loss, metrics = flow_ipa_loss(p, tgt, ts, mask, ref_pred=r, beta=600.0, backend="cpp")
        return loss, metrics["ipa_gap"]

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True)
    p1, p2 = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    loss_c, gap_c = compiled(p1, ref, target, t, m)
    loss_e, gap_e = step(p2, ref, target, t, m)
    torch.testing.assert_close(loss_c, loss_e)
    torch.testing.assert_close(gap_c, gap_e)
    loss_c.backward()
    loss_e.backward()
    torch.testing.assert_close(p1.grad, p2.grad)
    explain = torch._dynamo.explain(step)(pred, ref, target, t, m)
    assert explain.graph_break_count == 0 and explain.graph_count == 1


# The first op call of a fresh process inside torch.compile(fullgraph=True, dynamic=True): the
# backend is loaded during tracing (ipa._C, the Triton module, torch's CPU capability), and the
# scalar checks see dynamic shapes. Two batch sizes, one graph; forward and backward against eager.
FIRST_CALL_COMPILED = """
import sys, torch
from ipa.ops import flow_ipa_loss, halo_error

backend = sys.argv[1]
def step(p, target, t, mask, ref):
    loss, metrics = flow_ipa_loss(p, target, t, mask, ref_pred=ref, backend=backend)
    return loss + halo_error(p, target, mask, backend=backend).sum(), metrics["ipa_gap"]

compiled = torch.compile(step, fullgraph=True, dynamic=True)
for b in (2, 3):
    g = torch.Generator().manual_seed(b)
    p, target, ref = (torch.randn(b, 3, 4, 5, 7, generator=g) for _ in range(3))
    t, mask = torch.rand(b, generator=g), torch.rand(b, 3, 5, 7, generator=g)
    p1, p2 = p.clone().requires_grad_(), p.clone().requires_grad_()
    (loss_c, gap_c), (loss_e, gap_e) = compiled(p1, target, t, mask, ref), step(p2, target, t, mask, ref)
    loss_c.backward()
    loss_e.backward()
    torch.testing.assert_close((loss_c, gap_c, p1.grad), (loss_e, gap_e, p2.grad))
print(torch._dynamo.utils.counters["stats"]["unique_graphs"])
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_first_call_inside_torch_compile_dynamic(backend):
    _need(backend)
    proc = subprocess.run([sys.executable, "-c", FIRST_CALL_COMPILED, backend], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-1] == "1"  # dynamic: batch 3 reuses batch 2's graph


@pytest.mark.skipif(not (sys.platform == "linux" and platform.machine() == "x86_64"),
                    reason="Triton is a dependency on Linux x86-64 only")
def test_every_backend_is_tested_here():
    """The per-backend tests skip a backend that does not load; here none may be missing, so a broken
    build or kernel import fails instead of silently skipping them (conftest sets TRITON_INTERPRET)."""
    expected = {"cpp", "torch"} | ({"triton"} if os.environ.get("TRITON_INTERPRET") == "1" else set())
    assert set(available_backends("cpu")) == expected, backends._import_errors


def test_auto_backend_choice_and_fallback_warning(monkeypatch):
    assert backends.resolve_backend("auto", torch.device("cpu")) == "cpp"
    assert backends.resolve_backend("auto", torch.device("meta")) == "torch"
    monkeypatch.setitem(backends._status, "cpp", None)
    monkeypatch.setitem(backends._import_errors, "cpp", "ImportError: pretend it is not built")
    monkeypatch.setattr(backends, "_warned", set())
    with pytest.warns(RuntimeWarning, match="cpp backend is unavailable"):
        assert backends.resolve_backend("auto", torch.device("cpu")) == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        assert backends.resolve_backend("auto", torch.device("cpu")) == "torch"
    pred, _, target, m = make_inputs(SHAPE)
    torch.testing.assert_close(halo_error(pred, target, m), reference.halo_error(pred, target, m))


def test_unavailable_backend_errors_list_alternatives(monkeypatch):
    with pytest.raises(ValueError, match=r"backend='cpp' cannot run on cuda.*available"):
        backends.resolve_backend("cpp", torch.device("cuda"))
    with pytest.raises(ValueError, match="backend must be one of"):
        backends.resolve_backend("cuda", torch.device("cpu"))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "triton" not in available_backends("cpu")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        backends.resolve_backend("triton", torch.device("cpu"))


def _bad_input_cases():
    pred, ref, target, m = make_inputs(SHAPE)
    t = torch.rand(SHAPE[0])
    B, C, F, H, W = SHAPE
    ok = dict(model_pred=pred, target=target, timesteps=t, hand_mask=m, ref_pred=ref)
    return [
        (dict(target=target[:, :, :-1]), "target must have the shape of model_pred"),
        (dict(hand_mask=torch.rand(B, F, H, W)), r"hand_mask must have F - skip_frames = 4 - 1 = 3 frames"),
        (dict(hand_mask=torch.rand(B + 1, F - 1, H, W)), "hand_mask batch must be 2"),
        (dict(hand_mask=torch.rand(B, F - 1, H, W + 1)), r"hand_mask spatial size must be \(H, W\)"),
        (dict(hand_mask=torch.rand(B, 2, F - 1, H, W)), r"hand_mask with 5 dims must be \[B, 1"),
        (dict(hand_mask=torch.randint(0, 3, (B, F - 1, H, W))), "hand_mask must be float, bool or uint8"),
        (dict(timesteps=torch.rand(B, 1)), r"timesteps must have shape \(B,\) = \(2,\)"),
        (dict(timesteps=torch.tensor([0.5, 1.5])), r"timesteps must be normalized to \[0, 1\]"),
        (dict(timesteps=torch.tensor([0.5, -0.1])), r"timesteps must be normalized to \[0, 1\]"),
        (dict(timesteps=torch.tensor([500, 999])), "timesteps must be floating point"),
        (dict(ref_pred=None), "exactly one of ref_pred .* or ref_error .*got neither"),
        (dict(ref_error=torch.rand(B)), "exactly one of ref_pred .* or ref_error .*got both"),
        (dict(ref_pred=None, ref_error=torch.rand(B + 1)), r"ref_error must have shape \(B,\)"),
        (dict(model_pred=pred.long(), target=target.long()), "model_pred must be floating point"),
        (dict(model_pred=pred[0]), r"model_pred must be a latent tensor \[B, C, F, H, W\]"),
        (dict(model_pred=pred[:0], target=target[:0], timesteps=t[:0], hand_mask=m[:0]),
         r"model_pred must be non-empty in every dimension .*got shape \(0, "),
        (dict(target=target.to("meta")), "target is on meta but model_pred is on cpu"),
        (dict(hand_mask=m.to("meta")), "hand_mask is on meta but model_pred is on cpu"),
        (dict(beta=0.0), "beta must be a finite number > 0"),
        (dict(beta=10 ** 400), "beta must be a finite number > 0"),  # float() would overflow
        (dict(skip_frames=5, hand_mask=None), r"skip_frames must be an int in \[0, F=4\]"),
        (dict(skip_frames=True), "skip_frames must be an int, got True"),
        (dict(hand_weight=float("inf")), "hand_weight must be a finite number >= 0"),
        (dict(hand_weight=True), "hand_weight must be a real number, got True"),
    ], ok


@pytest.mark.parametrize("case", range(len(_bad_input_cases()[0])))
def test_bad_input_names_the_argument(case):
    cases, ok = _bad_input_cases()
    override, match = cases[case]
    kw = {**ok, **override}
    args = (kw.pop("model_pred"), kw.pop("target"), kw.pop("timesteps"), kw.pop("hand_mask"))
    with pytest.raises(ValueError, match=match):
        flow_ipa_loss(*args, **kw)


def test_dpo_errors_name_the_side():
    """DPO's tensors are checked by the shared helpers: each error names the side's argument."""
    pw, rw, tw, mw = make_inputs(SHAPE, seed=1)
    pl, rl, tl, ml = make_inputs(SHAPE, seed=2)
    refs = dict(ref_pred_w=rw, ref_pred_l=rl)
    for args, kw, name in [((pw, pl, tw, tl[:, :1], mw, ml), refs, "target_l must have the shape of model_pred_l"),
                           ((pw, pl, tw.long(), tl, mw, ml), refs, "target_w must be floating point"),
                           ((pw, pl, tw, tl, mw, ml[:, :1]), refs, "hand_mask_l must have F - skip_frames"),
                           ((pw, pl, tw, tl, mw[:1], ml), refs, "hand_mask_w batch must be 2"),
                           ((pw, pl, tw, tl, mw, ml), dict(ref_pred_w=rw, ref_pred_l=rl[:1]),
                            "ref_pred_l must have the shape of model_pred_l")]:
        with pytest.raises(ValueError, match=name):
            flow_dpo_loss(*args, **kw)


def test_numpy_scalars_are_numbers():
    """Hyper-parameters from a NumPy config: np.float32 / np.int64 give the Python values' result."""
    pred, ref, target, m = make_inputs(SHAPE)
    t = torch.rand(SHAPE[0])
    want = flow_ipa_loss(pred, target, t, m, ref_pred=ref, beta=50.0, hand_weight=7.0, skip_frames=1)[0]
    got = flow_ipa_loss(pred, target, t, m, ref_pred=ref, beta=np.float32(50), hand_weight=np.float32(7),
                        skip_frames=np.int64(1))[0]
    assert torch.equal(got, want)


@pytest.mark.parametrize("build,match", [
    (lambda: FlowIPALoss(beta=-1.0), "beta must be a finite number > 0"),
    (lambda: FlowDPOLoss(beta=float("nan")), "beta must be a finite number > 0"),
    (lambda: FlowSFTLoss(hand_weight=-1.0), "hand_weight must be a finite number >= 0"),
    (lambda: HaloError(skip_frames=-3), "skip_frames must be an int >= 0"),
    (lambda: FlowIPALoss(backend="gpu"), "backend must be one of"),
])
def test_loss_modules_refuse_bad_hyper_parameters_when_built(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_hand_mask_is_a_constant():
    """A mask that requires grad (say, from a soft detector) is a weight, as documented: no gradient
    reaches it, and it alone makes nothing to differentiate (no backward kernel for nothing)."""
    pred, ref, target, m = make_inputs(SHAPE)
    m.requires_grad_()
    assert not halo_error(pred, target, m).requires_grad
    p = pred.clone().requires_grad_()
    flow_ipa_loss(p, target, torch.rand(SHAPE[0]), m, ref_pred=ref)[0].backward()
    assert p.grad is not None and m.grad is None


def test_fake_tensors_trace_without_data():
    """Under a FakeTensorMode (shape propagation, as tracers use) nothing reads tensor values."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    pred, ref, target, m = make_inputs(SHAPE)
    with FakeTensorMode() as mode:
        loss, metrics = flow_ipa_loss(*(mode.from_tensor(x) for x in (pred, target, torch.rand(SHAPE[0]), m)),
                                      ref_pred=mode.from_tensor(ref))
    assert loss.shape == () and loss.dtype == torch.float32 and set(metrics) >= {"ipa_gap", "model_error"}


def test_ops_import_nothing_else_of_ipa():
    """Other projects import `ipa.ops` alone: it must not pull in models, training, data, ...; nor
    torch._dynamo (2 s more per process: every rank, every CLI call)."""
    code = ("import sys, ipa.ops; "
            "bad = [m for m in sys.modules if m.startswith('ipa.') and not m.startswith(('ipa.ops', 'ipa._C'))]; "
            "bad += ['torch._dynamo'] if 'torch._dynamo' in sys.modules else []; "
            "print(bad); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
