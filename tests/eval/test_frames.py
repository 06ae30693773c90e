import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from ipa.eval import LPIPS, psnr, ssim
from tests.eval.conftest import TinyLPIPS, moving_video


def test_psnr_identical_is_inf():
    v = moving_video()
    p = psnr(v, v)
    assert p.shape == (len(v),) and np.isposinf(p).all()


def test_psnr_known_noise_value():
    ref = np.full((2, 16, 16, 3), 100, np.uint8)
    gen = ref.copy()
    gen[0, ::2] += 7  # half the pixels off by 7 -> MSE 24.5
    gen[1] -= 3  # all pixels off by 3 -> MSE 9
    p = psnr(gen, ref)
    np.testing.assert_allclose(p, [10 * np.log10(255**2 / 24.5), 10 * np.log10(255**2 / 9)], rtol=1e-12)


def test_psnr_no_uint8_wraparound():
    # uint8 subtraction 0 - 255 would wrap to 1 (MSE 1, 48.13 dB); the true MSE is 255^2 -> 0 dB
    gen = np.zeros((1, 8, 8, 3), np.uint8)
    ref = np.full((1, 8, 8, 3), 255, np.uint8)
    assert psnr(gen, ref)[0] == pytest.approx(0.0, abs=1e-12)
    assert psnr(ref, gen)[0] == pytest.approx(0.0, abs=1e-12)


def _ssim_direct(a, b, L=255.0):
    """Wang et al. 2004 SSIM, Gaussian sigma 1.5 window truncated at 11x11, population statistics."""
    C1, C2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    vals = []
    for c in range(3):
        x, y = a[..., c].astype(np.float64), b[..., c].astype(np.float64)
        g = lambda z: gaussian_filter(z, 1.5, truncate=3.5)  # radius 5 -> 11x11
        mx, my = g(x), g(y)
        sxx, syy, sxy = g(x * x) - mx * mx, g(y * y) - my * my, g(x * y) - mx * my
        m = ((2 * mx * my + C1) * (2 * sxy + C2)) / ((mx**2 + my**2 + C1) * (sxx + syy + C2))
        vals.append(m[5:-5, 5:-5].mean())
    return np.mean(vals)


def test_ssim_identical_is_one_and_matches_direct_formula(rng):
    ref = moving_video()
    np.testing.assert_allclose(ssim(ref, ref), 1.0, atol=1e-12)
    noisy = np.clip(ref + rng.normal(0, 20, ref.shape), 0, 255).astype(np.uint8)
    s = ssim(noisy, ref)
    assert (s < 0.95).all()
    np.testing.assert_allclose(s, [_ssim_direct(a, b) for a, b in zip(noisy, ref)], rtol=1e-6)


def test_ssim_constant_shift_closed_form():
    # flat images x = 100, y = 130: variances 0, so SSIM = (2 mx my + C1) / (mx^2 + my^2 + C1)
    C1 = (0.01 * 255) ** 2
    x = np.full((1, 20, 20, 3), 100, np.uint8)
    y = np.full((1, 20, 20, 3), 130, np.uint8)
    expect = (2 * 100 * 130 + C1) / (100**2 + 130**2 + C1)
    assert ssim(x, y)[0] == pytest.approx(expect, rel=1e-9)


@pytest.mark.parametrize("fn", [psnr, ssim])
def test_bad_input_names_argument(fn):
    v = moving_video(t=4)
    with pytest.raises(ValueError, match="generated: 3 frames but reference has 4"):
        fn(v[:3], v)
    with pytest.raises(ValueError, match=r"generated: frame size \[48, 60\] differs from reference's \[48, 64\]"):
        fn(v[:, :, :60], v)
    with pytest.raises(ValueError, match="reference: expected RGB frames"):
        fn(v, v[..., 0])


@pytest.mark.parametrize("fmt", ["torchscript", "export"])
def test_lpips_user_module_matches_direct_call_and_identical_is_zero(scripted, rng, fmt):
    module = TinyLPIPS()
    x0 = torch.zeros(2, 3, 16, 16)
    metric = LPIPS(scripted(module, "lpips", (x0, x0), fmt), device="cpu", batch_size=3)
    ref = moving_video(t=5)
    gen = np.clip(ref + rng.normal(0, 25, ref.shape), 0, 255).astype(np.uint8)
    d = metric(gen, ref)
    with torch.no_grad():
        x = torch.from_numpy(gen).permute(0, 3, 1, 2).float() / 127.5 - 1
        y = torch.from_numpy(ref).permute(0, 3, 1, 2).float() / 127.5 - 1
        expect = module(x, y).double().numpy()
    assert d.shape == (5,) and (d > 1e-3).all()
    np.testing.assert_allclose(d, expect, rtol=1e-5)
    np.testing.assert_allclose(metric(ref, ref), 0.0, atol=1e-7)


def test_lpips_half_precision_export(scripted):
    ref = moving_video(t=3)
    gen = np.roll(ref, 3, axis=2)
    x0 = torch.zeros(2, 3, 16, 16)
    full = LPIPS(scripted(TinyLPIPS(), "full", (x0, x0)), device="cpu")
    half = LPIPS(scripted(TinyLPIPS().bfloat16(), "half", (x0.bfloat16(), x0.bfloat16())), device="cpu")
    np.testing.assert_allclose(half(gen, ref), full(gen, ref), rtol=0.05)
    assert half.dtype == torch.bfloat16


def test_lpips_bad_weights(tmp_path):
    with pytest.raises(ValueError, match="lpips_weights: .* does not exist"):
        LPIPS(tmp_path / "missing.pt")
    sd = tmp_path / "state.pt"
    torch.save({"w": torch.zeros(1)}, sd)
    try:
        import lpips  # noqa: F401  (works only beside a working torchvision)
    except Exception:
        with pytest.raises(ValueError, match="lpips_weights: .* not TorchScript or torch.export.*lpips"):
            LPIPS(sd, device="cpu")
    else:
        with pytest.raises(RuntimeError):  # wrong keys for lpips.LPIPS
            LPIPS(sd, device="cpu")
