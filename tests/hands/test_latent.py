"""Pixel masks to the latent grid (Wan's causal VAE: 8x space, 4x time, first frame alone)."""

import numpy as np
import pytest
import torch

from ipa.hands import halo_mask, latent_mask


def test_pixel_at_frame_5_lands_in_latent_frame_2():
    m = np.zeros((9, 32, 48), np.uint8)
    y, x = 19, 37
    m[5, y, x] = 1  # pixel frames 5..8 form latent frame 2
    out = latent_mask(m)
    assert out.shape == (3, 4, 6) and out.dtype == np.uint8
    assert out.sum() == 1 and out[2, y // 8, x // 8] == 1


def test_frame_0_only_in_latent_frame_0_and_frames_1_to_4_in_frame_1():
    m = np.zeros((9, 16, 16), bool)
    m[0, 0, 0] = True
    m[4, 15, 15] = True
    out = latent_mask(m)
    assert out[0, 0, 0] and out[0].sum() == 1
    assert out[1, 1, 1] and out[1].sum() == 1
    assert not out[2].any()


def test_wan_480p_shapes_and_halo_mask():
    m = np.zeros((81, 480, 832), np.uint8)
    assert latent_mask(m).shape == (21, 60, 104)
    assert halo_mask(m).shape == (20, 60, 104)  # what ipa.ops.halo_error takes per sample


def test_torch_in_torch_out_same_values():
    g = torch.Generator().manual_seed(0)
    m = torch.rand(13, 24, 40, generator=g) > 0.97
    out = latent_mask(m)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.bool and out.shape == (4, 3, 5)
    assert np.array_equal(out.numpy(), latent_mask(m.numpy()))


def test_max_pooling_keeps_soft_values():
    m = np.zeros((5, 8, 8), np.float32)
    m[1, 2, 3], m[3, 7, 7] = 0.25, 0.75
    assert latent_mask(m)[1, 0, 0] == pytest.approx(0.75)


@pytest.mark.parametrize("shape,match", [((8, 16, 16), "T = 4k \\+ 1"), ((9, 20, 16), "divisible by 8"),
                                          ((16, 16), r"pixel_mask must be \[T, H, W\]")])
def test_bad_shapes_name_the_argument(shape, match):
    with pytest.raises(ValueError, match=match):
        latent_mask(np.zeros(shape))
