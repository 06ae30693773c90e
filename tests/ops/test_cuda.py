"""The compiled Triton kernels on a real GPU (skipped without CUDA; see tests/conftest.py)."""

import math

import pytest
import torch

from ipa.ops import flow_ipa_loss, flow_sft_loss, halo_error
from ipa.ops._backends import resolve_backend

from .test_halo_error import ODD, make_inputs, reference_err_and_grad

pytestmark = pytest.mark.cuda

WAN_480P_B2 = (2, 16, 21, 60, 104)


def _cuda(*xs):
    return [x.cuda() if x is not None else None for x in xs]


def test_auto_is_triton_on_cuda():
    assert resolve_backend("auto", torch.device("cuda")) == "triton"


@pytest.mark.parametrize("shape", [ODD, WAN_480P_B2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("skip", [0, 1])
def test_triton_matches_reference_on_gpu(shape, dtype, skip):
    # the mask in the step's dtype, as a bf16 training step hands it on
    pred, _, target, m = make_inputs(shape, dtype=dtype, skip=skip, mask="bf16" if dtype == torch.bfloat16 else "float")
    truth, truth_grad, g = reference_err_and_grad(pred, target, m, skip)
    eager, eager_grad, _ = reference_err_and_grad(pred, target, m, skip, dtype=dtype)
    p, t, mm = _cuda(pred.detach().clone(), target, m)
    p.requires_grad_()
    err = halo_error(p, t, mm, skip_frames=skip)
    (err * g.to(err).cuda()).sum().backward()
    err, grad = err.detach().cpu().double(), p.grad.cpu().double()
    if dtype == torch.float32:
        torch.testing.assert_close(err, truth, rtol=1e-5, atol=0)
        torch.testing.assert_close(grad, truth_grad, rtol=1e-5, atol=1e-9)
    else:
        assert (err - truth).abs().max() <= 2 * (eager.double() - truth).abs().max() + 1e-7 * truth.abs().max()
        assert (grad - truth_grad).abs().max() <= 2 * (eager_grad.double() - truth_grad).abs().max() + 1e-12


def test_step_zero_is_log2_and_nan_propagates_on_gpu():
    pred, _, target, m = _cuda(*make_inputs(WAN_480P_B2, dtype=torch.bfloat16))
    t = torch.rand(pred.shape[0], device="cuda")
    loss, _ = flow_ipa_loss(pred, target, t, m, ref_pred=pred.clone())
    assert loss.item() == torch.tensor(math.log(2), dtype=torch.float32).item()
    target = target.clone()
    target[1, 3, 4, 5, 6] = float("nan")
    assert torch.isnan(flow_ipa_loss(pred, target, t, m, ref_pred=pred.clone())[0]).item()


@pytest.mark.parametrize("with_ref", [False, True])
def test_opcheck_on_gpu(with_ref):
    """The registration checks (schema, fake kernel, autograd, AOT dispatch) with the Triton kernels."""
    pred, ref, target, m = _cuda(*make_inputs((2, 3, 4, 5, 7), mask="bool"))
    pred.requires_grad_()
    ref = ref if with_ref else None
    torch.library.opcheck(torch.ops.ipa.halo_error_fwd.default, (pred, ref, target, m, 10.0, 1, "triton"))
    grad = torch.rand(2, device="cuda")
    torch.library.opcheck(torch.ops.ipa.halo_error_bwd.default, (grad, pred.detach(), target, m, 10.0, 1, "triton"))
    torch.library.opcheck(torch.ops.ipa.halo_error_bwd.default,
                          (grad, pred.detach(), target, m, 10.0, 1, "triton", torch.tensor(-2.5, device="cuda")))
    t = torch.rand(2, device="cuda")
    torch.library.opcheck(torch.ops.ipa.halo_loss_fwd.default,
                          (pred, ref, target, m, t, None if with_ref else torch.rand(2, device="cuda"), "ipa",
                           600.0, 10.0, 1, "triton"))


def test_losses_compile_fullgraph_on_gpu():
    pred, ref, target, m = _cuda(*make_inputs((2, 16, 5, 30, 52), dtype=torch.bfloat16))
    t = torch.rand(2, device="cuda")

    def step(p):
        return flow_ipa_loss(p, target, t, m, ref_pred=ref)[0] + flow_sft_loss(p, target, m)[0]

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True)
    p1, p2 = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    compiled(p1).backward()
    step(p2).backward()
    torch.testing.assert_close(p1.grad, p2.grad)


def test_int64_offsets_beyond_2_31_elements():
    """A [1, 16, 330, 640, 640] latent has 2.16e9 > 2^31 elements: int32 offsets would wrap."""
    shape = (1, 16, 330, 640, 640)
    n = math.prod(shape)
    free, _ = torch.cuda.mem_get_info()
    if free < 3 * n * 2 + 2**30:
        pytest.skip(f"needs {3 * n * 2 / 2**30:.0f} GiB free GPU memory")
    g = torch.Generator(device="cuda").manual_seed(0)
    pred = torch.randn(shape, device="cuda", generator=g, dtype=torch.bfloat16).requires_grad_()
    target = torch.randn(shape, device="cuda", generator=g, dtype=torch.bfloat16)
    err = halo_error(pred, target)
    want = sum(((pred[:, c].detach().float() - target[:, c].float()) ** 2).sum(dtype=torch.float64)
               for c in range(shape[1])) / n
    torch.testing.assert_close(err.double().cpu(), want.reshape(1).cpu(), rtol=1e-5, atol=0)
    err.sum().backward()
    tail = (2.0 / n) * (pred[0, -1, -1, -1, -8:].detach().float() - target[0, -1, -1, -1, -8:].float())
    torch.testing.assert_close(pred.grad[0, -1, -1, -1, -8:].float(), tail, rtol=1e-2, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_gradient_element_is_written_on_gpu(dtype):
    """The backward writes into uninitialized memory: hand it NaN-poisoned blocks (the caching
    allocator reuses freed blocks of the same size) so an unwritten element cannot pass."""
    pred, _, target, m = _cuda(*make_inputs(ODD, dtype=dtype))
    torch.cuda.synchronize()
    poison = [torch.full_like(pred, float("nan")) for _ in range(16)]
    del poison
    p = pred.clone().requires_grad_()
    loss, _ = flow_ipa_loss(p, target, torch.rand(ODD[0], device="cuda"), m, ref_pred=target + 0.1)
    loss.backward()
    assert p.grad.dtype == dtype and bool(torch.isfinite(p.grad).all())


@pytest.mark.parametrize("batch", [8, 61])
def test_per_sample_fold_is_race_free_and_deterministic_on_gpu(batch):
    """The fold runs one program per sample and the last to finish (an acq_rel count) writes the
    batch's loss and metrics from the others' errors: on a GPU those programs really race. 20 calls
    of each objective must agree bit for bit, and with the torch backend."""
    pred, ref, target, m = _cuda(*make_inputs((batch, 4, 3, 8, 40), dtype=torch.bfloat16))
    t = torch.rand(batch, device="cuda")
    for objective in ("ipa", "sft"):
        def call(backend="triton"):
            if objective == "ipa":
                return flow_ipa_loss(pred, target, t, m, ref_pred=ref, beta=50.0, backend=backend)
            return flow_sft_loss(pred, target, m, backend=backend)

        runs = [call() for _ in range(20)]
        for loss, metrics in runs[1:]:
            assert torch.equal(loss, runs[0][0]), objective
            assert all(torch.equal(metrics[k], runs[0][1][k]) for k in metrics), objective
        want, want_metrics = call("torch")
        torch.testing.assert_close(runs[0][0], want, rtol=1e-4, atol=1e-6)
        for k in want_metrics:
            torch.testing.assert_close(runs[0][1][k], want_metrics[k], rtol=1e-4, atol=1e-6, msg=k)


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_inputs_on_a_device_that_is_not_current():
    """Triton launches on the current device; the ops must switch to the inputs' device."""
    pred, ref, target, m = make_inputs(ODD)
    t = torch.rand(ODD[0])
    want, _ = flow_ipa_loss(pred, target, t, m, ref_pred=ref, beta=5.0, backend="torch")
    dev = torch.device("cuda", torch.cuda.device_count() - 1)
    p, r, tg, mm, tt = (x.to(dev) for x in (pred, ref, target, m, t))
    p.requires_grad_()
    with torch.cuda.device(0):
        loss, _ = flow_ipa_loss(p, tg, tt, mm, ref_pred=r, beta=5.0)
        loss.backward()
    torch.cuda.synchronize(dev)
    torch.testing.assert_close(loss.cpu(), want, rtol=1e-5, atol=0)
    assert p.grad.device == dev and torch.isfinite(p.grad).all()
