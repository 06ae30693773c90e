"""The demo's VAE-free latent map: exact inverse, Wan's causal frame layout, contract shapes."""

import numpy as np
import pytest
import torch

from ipa.demo import task


def test_decode_inverts_encode_exactly():
    cond = task.condition(0)
    assert np.array_equal(task.decode(task.encode(cond["video"])), cond["video"])
    rnd = np.random.default_rng(0).integers(0, 256, (9, 8, 6, 3), dtype=np.uint8)
    assert np.array_equal(task.decode(task.encode(rnd)), rnd)


def test_projection_is_orthogonal():
    assert torch.allclose(task.Q @ task.Q.T, torch.eye(task.CHANNELS), atol=1e-5)


def test_causal_frame_layout():
    # latent frame 0 depends on pixel frame 0 only; latent frame j on pixel frames 4j-3 .. 4j
    base = np.zeros((9, 8, 8, 3), np.uint8)
    z0 = task.encode(base)
    for f in range(9):
        v = base.copy()
        v[f] = 255
        changed = (task.encode(v) - z0).abs().amax(dim=(0, 2, 3)) > 0
        expect = 0 if f == 0 else (f + 3) // 4
        assert changed.tolist() == [j == expect for j in range(3)], f"pixel frame {f}"


def test_spatial_cells_are_2x2():
    v = np.zeros((5, 8, 8, 3), np.uint8)
    v[:, 2:4, 4:6] = 200
    changed = (task.encode(v) - task.encode(np.zeros_like(v))).abs().amax(dim=(0, 1)) > 0
    assert changed.nonzero().tolist() == [[1, 2]]


def test_sample_matches_the_model_contract():
    from ipa.models import model_inputs

    cond = task.condition(1)
    s = task.sample_tensors(cond)
    assert s["x0"].shape == (48, 3, 32, 32) and s["control"].shape == (100, 3, 32, 32)
    assert s["hand_mask"].shape == (2, 32, 32) and set(s["hand_mask"].unique().tolist()) <= {0.0, 1.0}
    assert s["hand_mask"].sum() > 0
    batch = {k: v[None] for k, v in s.items()}
    kw = model_inputs("wan-vace", batch, batch["x0"], torch.tensor([0.5]), config=task.MODEL_CONFIG)
    assert kw["control_hidden_states"].shape[1] == task.MODEL_CONFIG["vace_in_channels"]


def test_bad_video_shape():
    with pytest.raises(ValueError, match="4k\\+1"):
        task.encode(np.zeros((8, 8, 8, 3), np.uint8))
