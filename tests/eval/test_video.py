import numpy as np
import pytest
import torch

from ipa.eval.video import FeatureExtractor, FeatureStats, fd_from_features, frechet_distance, load_extractor, make_clips
from tests.eval.conftest import TinyFrameNet, TinyVideoNet, moving_video


def test_frechet_identical_stats_is_zero(rng):
    f = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6))
    s = FeatureStats.from_features(f)
    assert frechet_distance(s.mu, s.sigma, s.mu, s.sigma) == pytest.approx(0.0, abs=1e-8)


def test_frechet_closed_form_diagonal():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 3.0, -2.0])
    s1, s2 = np.array([1.0, 4.0, 0.5]), np.array([9.0, 1.0, 2.0])
    expect = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    # = 5 + (1+9-6) + (4+1-4) + (0.5+2-2) = 10.5
    assert expect == pytest.approx(10.5)
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expect, rel=1e-10)
    # 1-D: (mu1 - mu2)^2 + (sd1 - sd2)^2
    assert frechet_distance([2.0], [[4.0]], [-1.0], [[1.0]]) == pytest.approx(9 + 1, rel=1e-10)


def test_frechet_rotation_invariant_full_covariance(rng):
    # rotating both Gaussians by the same orthogonal Q leaves FD unchanged; compare with diagonal closed form
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
    s1, s2 = rng.uniform(0.5, 3, 4), rng.uniform(0.5, 3, 4)
    expect = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    got = frechet_distance(q @ mu1, q @ np.diag(s1) @ q.T, q @ mu2, q @ np.diag(s2) @ q.T)
    assert got == pytest.approx(expect, rel=1e-8)


def test_feature_stats_and_bad_shapes(rng, tmp_path):
    f = rng.normal(size=(50, 3))
    s = FeatureStats.from_features(f)
    np.testing.assert_allclose(s.mu, f.mean(0))
    np.testing.assert_allclose(s.sigma, np.cov(f, rowvar=False))
    s.save(tmp_path / "s.npz")
    t = FeatureStats.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(t.sigma, s.sigma)
    assert t.n == 50
    with pytest.raises(ValueError, match="features: expected \\[N, D\\] with N >= 2"):
        FeatureStats.from_features(f[:1])
    with pytest.raises(ValueError, match="sigma1/sigma2"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


def test_fd_of_samples_approaches_closed_form(rng):
    a = rng.normal(0, 1, size=(20000, 2))
    b = rng.normal(0, 1, size=(20000, 2)) * [2.0, 1.0] + [1.0, 0.0]
    # (1)^2 + (1 + 4 - 2*2) + 0 = 2
    assert fd_from_features(a, b) == pytest.approx(2.0, abs=0.05)


def test_make_clips():
    v = moving_video(t=20)
    c = make_clips(v, 8)
    assert c.shape == (2, 8, 48, 64, 3)
    np.testing.assert_array_equal(c[1], v[8:16])
    short = make_clips(v[:5], 8)
    assert short.shape == (1, 8, 48, 64, 3)
    np.testing.assert_array_equal(short[0, 5:], np.repeat(v[4:5], 3, 0))


@pytest.mark.parametrize("fmt", ["torchscript", "export"])
def test_extractors_from_user_files(scripted, fmt):
    v = moving_video(t=12)
    frame_path = scripted(TinyFrameNet(), "frame", (torch.zeros(2, 3, 32, 32),), fmt)
    video_path = scripted(TinyVideoNet(), "video", (torch.zeros(1, 3, 8, 32, 32),), fmt)
    fx = load_extractor("fid", str(frame_path), device="cpu")
    vx = load_extractor("fvd", {"path": str(video_path), "size": [32, 32], "value_range": [0, 1]}, clip_len=6,
                        device="cpu")
    assert fx.kind == "frame" and vx.kind == "video"
    ff, vf = fx(v), vx(v)
    assert ff.shape == (12, 6) and vf.shape == (2, 5)
    # direct computation: frames in [-1, 1] at native size; clips resized to 32x32 in [0, 1]
    with torch.no_grad():
        x = torch.from_numpy(v).permute(0, 3, 1, 2).float() / 127.5 - 1
        np.testing.assert_allclose(ff, TinyFrameNet()(x).numpy(), rtol=1e-5, atol=1e-6)
        c = torch.from_numpy(v[6:12]).permute(0, 3, 1, 2).float() / 255
        c = torch.nn.functional.interpolate(c, size=(32, 32), mode="bilinear", antialias=True)
        np.testing.assert_allclose(vf[1], TinyVideoNet()(c.permute(1, 0, 2, 3)[None])[0].numpy(), rtol=1e-5,
                                   atol=1e-6)


def test_half_precision_extractors_get_half_inputs(scripted):
    """A bf16 export takes bf16 frames (it was fed float32, which its convolutions refuse); its
    features follow the float32 model's up to bf16 rounding."""
    v = moving_video(t=12)
    for net, spec, shape in ((TinyFrameNet(), {"kind": "frame"}, (2, 3, 32, 32)),
                             (TinyVideoNet(), {"kind": "video", "size": [32, 32]}, (1, 3, 6, 32, 32))):
        full = load_extractor("fvd", {**spec, "path": str(scripted(net, "full", (torch.zeros(shape),)))},
                              clip_len=6, device="cpu")
        half = load_extractor("fvd", {**spec, "path": str(scripted(net.bfloat16(), "half",
                                                                    (torch.zeros(shape, dtype=torch.bfloat16),)))},
                              clip_len=6, device="cpu")
        np.testing.assert_allclose(half(v), full(v), rtol=0.05, atol=0.02)
        assert half.dtype == torch.bfloat16 and full.dtype == torch.float32


def test_fd_pipeline_same_video_zero_noisy_positive(rng):
    ex = FeatureExtractor(TinyFrameNet(), kind="frame", device="cpu")
    v = moving_video(t=12)
    noise = rng.normal(0, 1, v.shape)
    light, heavy = (np.clip(v + a * noise, 0, 255).astype(np.uint8) for a in (8, 60))
    assert fd_from_features(ex(v), ex(v)) == pytest.approx(0.0, abs=1e-9)
    fd_light, fd_heavy = fd_from_features(ex(light), ex(v)), fd_from_features(ex(heavy), ex(v))
    assert 1e-7 < fd_light < fd_heavy


def test_extractor_bad_spec(tmp_path):
    with pytest.raises(ValueError, match="extractors.fvd.path: .* does not exist"):
        load_extractor("fvd", str(tmp_path / "nope.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="extractors.fvd.path: .* neither TorchScript nor"):
        load_extractor("fvd", str(junk))
    with pytest.raises(ValueError, match="extractors.fvd: unknown key"):
        load_extractor("fvd", {"path": str(junk), "kinds": "video"})
    with pytest.raises(ValueError, match="extractors.fid.kind"):
        FeatureExtractor(TinyFrameNet(), kind="clip", name="extractors.fid")
