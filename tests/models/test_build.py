import pytest
import torch

from ipa.models import (FAMILIES, build_transformer, model_inputs, required_keys, synthetic_batch,
                        tiny_config)

from .conftest import batch_for, tiny


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_forward_shapes_and_grad(family):
    model = tiny(family)
    batch = batch_for(family, model)
    t = torch.tensor([0.25, 0.75])
    kwargs = model_inputs(family, batch, batch["x0"], t, config=model.config)
    out = model(**kwargs)[0]
    assert out.shape == batch["x0"].shape
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing


@pytest.mark.parametrize("family", FAMILIES)
def test_synthetic_batch_has_exactly_the_required_keys(family):
    cfg = tiny_config(family)
    batch = synthetic_batch(family, cfg, 2, 3, 4, 4, seed=0)
    assert set(batch) == set(required_keys(family, cfg)) | {"hand_mask", "sample_id", "draw"}
    assert batch["hand_mask"].shape == (2, 2, 4, 4)
    again = synthetic_batch(family, cfg, 2, 3, 4, 4, seed=0)
    assert all(torch.equal(batch[k], again[k]) for k in batch if torch.is_tensor(batch[k]))


def test_timestep_is_s_times_1000_and_vace_control_passed():
    model = tiny("wan-vace")
    batch = batch_for("wan-vace", model)
    kw = model_inputs("wan-vace", batch, batch["x0"], torch.tensor([0.5, 0.001]), config=model.config)
    assert torch.allclose(kw["timestep"], torch.tensor([500.0, 1.0]))
    assert kw["control_hidden_states"].shape[1] == 96 == model.config.vace_in_channels
    assert kw["encoder_hidden_states"] is not None and kw["return_dict"] is False


def test_animate_inputs_concatenate_condition_and_pass_pose_face():
    model = tiny("wan-animate")
    batch = batch_for("wan-animate", model)
    kw = model_inputs("wan-animate", batch, batch["x0"], torch.tensor([0.5, 0.5]), config=model.config)
    assert kw["hidden_states"].shape[1] == model.config.in_channels == 2 * 4 + 4
    assert kw["pose_hidden_states"].shape[2] == batch["x0"].shape[2] - 1
    assert kw["face_pixel_values"].shape[2] == 4 * (batch["x0"].shape[2] - 1) - 3
    assert "encoder_hidden_states_image" in kw


def test_same_seed_same_weights_and_rng_untouched():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, b, c = tiny("wan", seed=7), tiny("wan", seed=7), tiny("wan", seed=8)
    assert torch.equal(torch.get_rng_state(), state)  # seeded build leaves the caller's RNG alone
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_bf16_keeps_fp32_modules():
    model = build_transformer("wan-vace", "tiny", dtype=torch.bfloat16, seed=0)
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert dtypes["scale_shift_table"] == torch.float32
    assert dtypes["blocks.0.attn1.to_q.weight"] == torch.bfloat16


@pytest.mark.parametrize("family", FAMILIES)
def test_half_model_runs_on_fp32_batches(family):
    """Shards are fp32; `forward` and the offline passes feed a bf16 model in bf16 (they used to pass
    the fp32 latents through, and its convolutions refused them)."""
    from ipa.models import flow_draw, forward, precompute_reference_errors, prediction_error

    model = build_transformer(family, "tiny", dtype=torch.bfloat16, seed=0)
    batch = synthetic_batch(family, model.config, 2, 2, 4, 4, seed=1)
    draw = flow_draw(batch, seed=0, draws=[0, 0])
    half = {k: v.bfloat16() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}
    with torch.no_grad():
        pred = forward(model, family, batch, draw["noisy"], draw["t"])
        assert pred.dtype == torch.bfloat16
        assert torch.equal(pred, forward(model, family, half, draw["noisy"].bfloat16(), draw["t"]))
    err = prediction_error(model, family, batch, draw["noisy"], draw["t"], draw["target"])
    assert err.dtype == torch.float32 and torch.isfinite(err).all()
    store = precompute_reference_errors(model, family, [batch], n_draws=1, seed=0)
    assert store.lookup(batch["sample_id"], [0, 0])[0].tolist() == err.tolist()


def test_dict_source_and_local_folder_roundtrip(tmp_path):
    cfg = tiny_config("wan")
    cfg["num_layers"] = 1
    model = build_transformer("wan", cfg, dtype=torch.float32, seed=3)
    assert model.config.num_layers == 1
    model.save_pretrained(tmp_path / "pipe" / "transformer")
    for path in (tmp_path / "pipe" / "transformer", tmp_path / "pipe"):  # transformer folder or pipeline root
        loaded = build_transformer("wan", str(path), dtype=torch.float32)
        assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="WanTransformer3DModel.*wan-vace|needs WanVACETransformer3DModel"):
        build_transformer("wan-vace", str(tmp_path / "pipe"), dtype=torch.float32)


def test_bad_arguments_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        build_transformer("wan", str(tmp_path / "nope"), dtype=torch.float32)
    with pytest.raises(ValueError, match="family"):
        build_transformer("wan2", "tiny", dtype=torch.float32)
    with pytest.raises(ValueError, match="dtype"):
        build_transformer("wan", "tiny", dtype="bf16")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="config.json"):
        build_transformer("wan", str(tmp_path / "empty"), dtype=torch.float32)
    for text, match in (("{", "is not valid JSON"), ("[1]", "must hold a JSON mapping")):
        (tmp_path / "empty" / "config.json").write_text(text)
        with pytest.raises(ValueError, match=f"^source: .*config.json' {match}"):
            build_transformer("wan", str(tmp_path / "empty"), dtype=torch.float32)
    # diffusers would ignore a misspelt key and build its full-size default
    with pytest.raises(ValueError, match=r"^source: unknown WanTransformer3DModel config key\(s\) \['num_layer'\]"):
        build_transformer("wan", {**tiny_config("wan"), "num_layer": 1}, dtype=torch.float32)


def test_model_inputs_validates_batch():
    cfg = tiny_config("wan-vace")
    batch = synthetic_batch("wan-vace", cfg, 2, 3, 4, 4)
    x = batch["x0"]
    with pytest.raises(ValueError, match="missing 'control'"):
        model_inputs("wan-vace", {k: v for k, v in batch.items() if k != "control"}, x, torch.rand(2), config=cfg)
    with pytest.raises(ValueError, match=r"control.*\[2, 96, \*, 4, 4\]"):
        model_inputs("wan-vace", {**batch, "control": batch["control"][:, :48]}, x, torch.rand(2), config=cfg)
    with pytest.raises(ValueError, match="timesteps"):
        model_inputs("wan-vace", batch, x, torch.rand(3), config=cfg)
    with pytest.raises(ValueError, match="text_emb"):
        model_inputs("wan-vace", {**batch, "text_emb": batch["text_emb"][..., :5]}, x, torch.rand(2), config=cfg)


def test_wan_i2v_style_config_takes_cond_latents_and_image_emb():
    # An I2V-shaped Wan config: extra input channels (mask + image latents) and CLIP image tokens
    # through added K/V projections (these split the context at a hard-coded 512 text tokens).
    cfg = {**tiny_config("wan"), "in_channels": 12, "out_channels": 4, "image_dim": 16, "added_kv_proj_dim": 24}
    model = build_transformer("wan", cfg, dtype=torch.float32, seed=0)
    batch = synthetic_batch("wan", model.config, 1, 2, 4, 4, text_len=512, image_len=3)
    assert batch["cond_latents"].shape[1] == 8 and batch["image_emb"].shape == (1, 3, 16)
    kw = model_inputs("wan", batch, batch["x0"], torch.tensor([0.5]), config=model.config)
    assert kw["hidden_states"].shape[1] == 12
    assert model(**kw)[0].shape == batch["x0"].shape
