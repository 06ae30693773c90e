"""`ipa.ops.halo_error` / `halo_errors` on every backend against `ipa.ops.reference`."""

import pytest
import torch

from ipa.ops import HaloError, available_backends, halo_error, halo_errors, reference

BACKENDS = ["torch", "cpp", "triton"]
ODD = (3, 5, 7, 13, 31)  # B, C, F, H, W: nothing a power of two
# A plane of 67 x 71 = 4757 elements: over two of the C++ forward's 2048-element chunks plus a rest,
# and several Triton blocks with a partial last one where a block is smaller than the plane (bf16's
# 1024-element forward blocks, fp32's 4096-element backward ones; a Wan 480p latent plane is
# 60 x 104 = 6240).
LARGE_PLANE = (2, 2, 3, 67, 71)


def _need(backend):
    if backend not in available_backends("cpu"):
        pytest.skip(f"backend {backend} unavailable on CPU here: {available_backends('cpu')}")


def make_inputs(shape=ODD, dtype=torch.float32, mask="float", skip=1, seed=0):
    """pred, ref, target in `dtype` and a hand mask: "float" (float32, values beyond [0, 1]),
    "bf16" / "fp16" (the same in half precision, as a half-precision training step hands it on),
    "bool", "uint8", "5d" (B, 1, F - skip, H, W) or None."""
    g = torch.Generator().manual_seed(seed)
    B, C, F, H, W = shape
    pred = torch.randn(shape, generator=g).to(dtype)
    ref = torch.randn(shape, generator=g).to(dtype)
    target = torch.randn(shape, generator=g).to(dtype)
    mshape = (B, F - skip, H, W)
    if mask is None:
        m = None
    elif mask in ("float", "bf16", "fp16"):  # values outside [0, 1] exercise the clamp
        m = torch.rand(mshape, generator=g) * 1.4 - 0.2
        m = m.to({"float": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[mask])
    elif mask == "bool":
        m = torch.rand(mshape, generator=g) > 0.7
    elif mask == "uint8":
        m = (torch.rand(mshape, generator=g) > 0.7).to(torch.uint8)
    elif mask == "5d":
        m = torch.rand(mshape, generator=g).unsqueeze(1)
    return pred, ref, target, m


def reference_err_and_grad(pred, target, mask, skip, dtype=torch.float64):
    p = pred.detach().to(dtype).requires_grad_()
    m = mask.to(dtype) if mask is not None and mask.is_floating_point() else mask
    err = reference.halo_error(p, target.to(dtype), m, hand_weight=10.0, skip_frames=skip)
    g = torch.linspace(0.5, 1.5, err.shape[0], dtype=dtype)
    (err * g).sum().backward()
    return err.detach(), p.grad, g


def ours_err_and_grad(pred, target, mask, skip, backend, g):
    p = pred.detach().clone().requires_grad_()
    err = halo_error(p, target, mask, hand_weight=10.0, skip_frames=skip, backend=backend)
    (err * g.to(err.dtype)).sum().backward()
    return err.detach(), p.grad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mask", [None, "float", "bf16", "fp16", "bool", "uint8", "5d"])
@pytest.mark.parametrize("skip", [0, 1])
def test_fp32_matches_reference(backend, mask, skip):
    _need(backend)
    pred, _, target, m = make_inputs(mask=mask, skip=skip)
    want, want_grad, g = reference_err_and_grad(pred, target, m, skip, dtype=torch.float32)
    got, got_grad = ours_err_and_grad(pred, target, m, skip, backend, g)
    assert got.dtype == torch.float32 and got.shape == (ODD[0],)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)
    assert got_grad.dtype == torch.float32
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # each has its launch configuration
def test_planes_over_several_chunks_and_blocks(backend, dtype):
    _need(backend)
    pred, ref, target, m = make_inputs(LARGE_PLANE, dtype=dtype)
    # the fp32 reference on the same (upcast) values: only the summation order differs
    want, want_grad, g = reference_err_and_grad(pred, target, m, 1, dtype=torch.float32)
    got, got_grad = ours_err_and_grad(pred, target, m, 1, backend, g)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)
    grad_tol = 1e-5 if dtype == torch.float32 else 8e-3  # bf16: the gradient is rounded to bf16
    torch.testing.assert_close(got_grad.float(), want_grad, rtol=grad_tol, atol=1e-9)
    err, err_ref = halo_errors(pred, target, m, ref_pred=ref, backend=backend)
    want_ref = reference.halo_error(ref.float(), target.float(), m)
    torch.testing.assert_close(err_ref, want_ref, rtol=1e-5, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("skip", [0, 1])
def test_low_precision_within_twice_eager_error(backend, dtype, skip):
    """Forward and gradient errors against fp64 are at most 2x those of eager PyTorch in `dtype`."""
    _need(backend)
    pred, _, target, m = make_inputs(dtype=dtype, skip=skip, mask="bf16" if dtype == torch.bfloat16 else "fp16")
    # the kernels get the mask in the step's dtype, as a half-precision training step hands it on
    truth, truth_grad, g = reference_err_and_grad(pred, target, m, skip)
    eager, eager_grad, _ = reference_err_and_grad(pred, target, m, skip, dtype=dtype)
    got, got_grad = ours_err_and_grad(pred, target, m, skip, backend, g)
    assert got_grad.dtype == dtype

    def worst(x, ref):
        return (x.double() - ref).abs().max().item()

    assert worst(got, truth) <= 2 * worst(eager, truth) + 1e-7 * truth.abs().max().item()
    assert worst(got_grad, truth_grad) <= 2 * worst(eager_grad, truth_grad) + 1e-12


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_fp64(backend):
    _need(backend)
    # The Triton interpreter runs each program in Python: keep its shape tiny.
    shape = (2, 1, 2, 2, 3) if backend == "triton" else (2, 2, 3, 3, 5)
    pred, _, target, m = make_inputs(shape, dtype=torch.float64, mask="float")
    pred.requires_grad_()
    target.requires_grad_()
    m = m.double()

    def fn(p, t):
        return halo_error(p, t, m, hand_weight=7.0, skip_frames=1, backend=backend)

    assert fn(pred, target).dtype == torch.float64
    assert torch.autograd.gradcheck(fn, (pred, target))


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_reference_error_in_same_pass(backend):
    _need(backend)
    pred, ref, target, m = make_inputs(mask="bool")
    ref.requires_grad_()
    err, err_ref = halo_errors(pred, target, m, ref_pred=ref, backend=backend)
    torch.testing.assert_close(err, reference.halo_error(pred, target, m), rtol=1e-5, atol=0)
    torch.testing.assert_close(err_ref, reference.halo_error(ref.detach(), target, m), rtol=1e-5, atol=0)
    assert not err_ref.requires_grad  # the frozen prediction never receives a gradient
    err, err_ref = halo_errors(pred.requires_grad_(), target, m, ref_pred=ref, backend=backend)
    assert err.requires_grad and not err_ref.requires_grad  # nor does its error carry one
    assert halo_errors(pred, target, m, backend=backend)[1] is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_reference_error_is_differentiable_in_target(backend):
    """err_ref depends on target (not on the frozen prediction): with a target that needs a gradient,
    it carries one, and d/d target sums both errors' terms (fp64 gradcheck)."""
    _need(backend)
    pred, ref, target, m = make_inputs((2, 1, 2, 2, 3), dtype=torch.float64)
    pred.requires_grad_()
    target.requires_grad_()
    m = m.double()
    fn = lambda p, t: halo_errors(p, t, m, ref_pred=ref, hand_weight=7.0, backend=backend)  # noqa: E731
    err, err_ref = fn(pred, target)
    assert err.requires_grad and err_ref.requires_grad
    assert torch.autograd.gradcheck(fn, (pred, target))
    # only err_ref used: the gradient reaches target, none reaches pred
    fn(pred, target)[1].sum().backward()
    assert pred.grad is None and target.grad is not None


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    _need(backend)
    pred, _, target, m = make_inputs((2, 3, 4, 6, 5))
    # Same values, permuted storage: a channels-last-like view and a strided slice.
    pred_nc = pred.permute(0, 2, 1, 3, 4).contiguous().permute(0, 2, 1, 3, 4)
    big_target = torch.zeros(2, 3, 4, 6, 10)
    big_target[..., ::2] = target
    target_nc = big_target[..., ::2]
    m_nc = m.transpose(2, 3).contiguous().transpose(2, 3)
    assert not (pred_nc.is_contiguous() or target_nc.is_contiguous() or m_nc.is_contiguous())
    want, want_grad, g = reference_err_and_grad(pred, target, m, 1, dtype=torch.float32)
    got, got_grad = ours_err_and_grad(pred_nc, target_nc, m_nc, 1, backend, g)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_propagates(backend):
    _need(backend)
    for which in ("pred", "target", "mask"):
        pred, _, target, m = make_inputs((2, 2, 3, 4, 5))
        {"pred": pred, "target": target, "mask": m}[which][1, 0, 1, 2] = float("nan")
        err = halo_error(pred, target, m, backend=backend)
        assert torch.isnan(err[1]), which
        assert torch.isfinite(err[0]), which


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_deterministic(backend):
    _need(backend)
    pred, _, target, m = make_inputs((2, 16, 5, 30, 52), dtype=torch.bfloat16)
    a = halo_error(pred, target, m, backend=backend)
    b = halo_error(pred, target, m, backend=backend)
    assert torch.equal(a, b)


@pytest.fixture
def torch_threads():
    """Set torch's intra-op threads (the C++ kernels' OpenMP team) for one test, then restore."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [2, 3, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpp_threads_split_planes_without_changing_a_bit(threads, dtype, torch_threads):
    """OpenMP splits the B*C*F planes over the threads (105 here: uneven for 2, 3 and 5 threads) and
    the per-plane sums are added in plane order, so any thread count gives 1 thread's bits. Set
    explicitly: how many cores the test machine (or its pytest-xdist worker) has must not decide
    whether the split runs."""
    _need("cpp")
    pred, ref, target, m = make_inputs(dtype=dtype)
    g = torch.linspace(0.5, 1.5, ODD[0])

    def run():
        p = pred.detach().clone().requires_grad_()
        err, err_ref = halo_errors(p, target, m, ref_pred=ref, backend="cpp")
        (err * g).sum().backward()
        return err.detach(), err_ref, p.grad

    torch_threads(1)
    one = run()
    torch_threads(threads)
    assert torch.get_num_threads() == threads
    for a, b in zip(run(), one):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype,frames", [(torch.float32, 5), (torch.bfloat16, 9)])
def test_cpp_large_gradient_takes_the_streaming_stores(dtype, frames, torch_threads):
    """A gradient over 32 MB is written with non-temporal stores (csrc/halo.cpp, kStreamAbove), one
    under it with plain stores: each sample here is under, the batch over, and both must give the
    same bits. W = 255 puts planes off 16-byte alignment, so the unaligned head and tail run too.
    3 threads: each orders its own streamed stores (sfence) before the team's closing barrier."""
    _need("cpp")
    torch_threads(3)
    from ipa.ops import _backends

    shape = (2, 16, frames, 256, 255)
    g = torch.Generator().manual_seed(4)
    pred, target = (torch.randn(shape, generator=g).to(dtype) for _ in range(2))
    mask = torch.rand((2, frames - 1, 256, 255), generator=g)
    grad_err = torch.tensor([0.7, 1.3])
    per_sample = pred[0].numel() * pred.element_size()
    assert per_sample < 32 << 20 < 2 * per_sample
    streamed = _backends.backward("cpp", grad_err, pred, target, mask, 10.0, 1)
    for b in range(2):
        plain = _backends.backward("cpp", grad_err[b:b + 1], pred[b:b + 1], target[b:b + 1], mask[b:b + 1], 10.0, 1)
        assert torch.equal(streamed[b:b + 1], plain), b
    want = _backends.backward("torch", grad_err, pred, target, mask, 10.0, 1)
    tol = dict(rtol=1e-6, atol=0) if dtype == torch.float32 else dict(rtol=2 ** -7, atol=0)
    torch.testing.assert_close(streamed, want, **tol)


def test_hand_weight_one_is_plain_mse_and_weights_hands():
    pred, _, target, _ = make_inputs((2, 2, 3, 4, 5))
    ones = torch.ones(2, 2, 4, 5)
    mse = ((pred - target) ** 2).mean(dim=(1, 2, 3, 4))
    torch.testing.assert_close(halo_error(pred, target, ones, hand_weight=1.0), mse)
    torch.testing.assert_close(halo_error(pred, target, None), mse)
    # All-hand mask on frames >= 1: those frames weigh 10x, frame 0 weighs 1x.
    sq = (pred - target) ** 2
    want = (sq[:, :, :1].sum(dim=(1, 2, 3, 4)) + 10 * sq[:, :, 1:].sum(dim=(1, 2, 3, 4))) / sq[0].numel()
    torch.testing.assert_close(halo_error(pred, target, ones, hand_weight=10.0), want)


def test_module_wrapper():
    pred, _, target, m = make_inputs((2, 2, 3, 4, 5))
    mod = HaloError(hand_weight=4.0, skip_frames=1)
    assert "hand_weight=4.0" in repr(mod)
    torch.testing.assert_close(mod(pred, target, m), halo_error(pred, target, m, hand_weight=4.0))
