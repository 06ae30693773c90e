"""`ipa.train.loop.step_loss`, the trainer's wiring of draws, models and the fused losses, against
`ipa.ops.reference` fed by inputs built here from the draw definition (x_t = (1 - t) x0 + t noise,
target = noise - x0, the model at timestep 1000 t). The distributed tests check the runs; at step 0
the policy equals the reference and the IPA/DPO loss is log 2 whatever the wiring, so this test
trains nothing and makes the policy differ from the reference first."""

import math

import pytest
import torch

from ipa import models
from ipa.data import ShardDataset, collate, synthesize
from ipa.ops import reference as spec
from ipa.train.config import load_config
from ipa.train.loop import step_loss

from .test_distributed import TINY

DRAW = 3


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("step") / "pairs", n=2, with_loser=True)


@pytest.fixture(scope="module")
def family_data(tmp_path_factory):
    """Two samples per transformer family (each family's conditions differ)."""
    root = tmp_path_factory.mktemp("families")
    return {family: synthesize(root / family, family=family, n=2) for family in ("wan", "wan-animate")}


def _setup(pairs, *overrides, family="wan-vace"):
    cfg = load_config(TINY, [f"data.path={pairs}", f"model.family={family}", "objective.hand_weight=4",
                             "objective.timestep_sampling=logit-normal", *overrides])
    base = models.build_transformer(family, "tiny", dtype=torch.float32, attention_backend="native", seed=0)
    policy = models.build_transformer(family, "tiny", dtype=torch.float32, attention_backend="native", seed=0)
    with torch.random.fork_rng():  # PEFT draws LoRA's A from the global generator: the same A in any test order
        torch.manual_seed(0)
        models.add_lora(policy, rank=4, alpha=4)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # LoRA's B starts at zero: move it, so the policy is not the reference
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=gen)
    batch = collate([ShardDataset(pairs)[i] for i in range(2)])
    return cfg, base, policy, batch


def _draw(cfg, batch, x0):
    """noise, t, x_t, target of the batch's draw DRAW, from the per-sample definition."""
    o = cfg.objective
    noise, t = zip(*(models.draw_noise_and_t(sid, DRAW, x0.shape[1:], seed=cfg.run.seed,
                                             sampling=o.timestep_sampling, shift=o.shift,
                                             logit_mean=o.logit_mean, logit_std=o.logit_std)
                     for sid in batch["sample_id"]))
    noise, t = torch.stack(noise), torch.stack(t)
    tb = t.view(-1, 1, 1, 1, 1)
    return noise, t, (1 - tb) * x0 + tb * noise, noise - x0


def _predict(cfg, model, batch, x_t, t):
    with torch.no_grad():
        return models.forward(model, cfg.model.family, batch, x_t, t).double()


def _reference(mode, cfg, base, policy, batch):
    """The trainer's reference: the adapter-disabled policy, or errors precomputed with the base."""
    if mode == "adapter":
        return models.Reference.create("adapter", policy=policy, family=cfg.model.family)
    o = cfg.objective
    store = models.precompute_reference_errors(base, cfg.model.family, [batch], n_draws=DRAW + 1, seed=cfg.run.seed,
                                               sampling=o.timestep_sampling, shift=o.shift, hand_weight=o.hand_weight,
                                               skip_frames=o.skip_frames, losers=o.name == "dpo")
    return models.Reference.create("precomputed", store=store)


@pytest.mark.parametrize("objective,mode", [("ipa", "adapter"), ("ipa", "precomputed"), ("sft", None),
                                            ("dpo", "adapter"), ("dpo", "precomputed")])
def test_step_loss_is_the_objective_on_the_draw(pairs, objective, mode):
    _check_step_loss(*_setup(pairs, f"objective.name={objective}"), objective, mode)


@pytest.mark.parametrize("family", ["wan", "wan-animate"])
@pytest.mark.parametrize("mode", ["adapter", "precomputed"])
def test_step_loss_wires_the_other_families(family_data, family, mode):
    """Plain Wan and Wan-Animate take other conditions (no VACE control; pose and face video)."""
    _check_step_loss(*_setup(family_data[family], "objective.name=ipa", family=family), "ipa", mode)


def _check_step_loss(cfg, base, policy, batch, objective, mode):
    o = cfg.objective
    halo = dict(hand_weight=o.hand_weight, skip_frames=o.skip_frames)
    noise, t, x_t, target = _draw(cfg, batch, batch["x0"])
    assert 0 < t.min() and t.max() < 1 and not torch.equal(t[0], t[1])
    mask = batch["hand_mask"].double()
    pred = _predict(cfg, policy, batch, x_t, t)
    if objective == "ipa":
        want = spec.flow_ipa_loss(pred, target.double(), t.double(), mask, ref_pred=_predict(cfg, base, batch, x_t, t),
                                  beta=o.beta, **halo)
    elif objective == "sft":
        want = spec.flow_sft_loss(pred, target.double(), mask, **halo)
    else:  # the loser shares the winner's noise and timestep
        x0_l = batch["x0_loser"]
        tb = t.view(-1, 1, 1, 1, 1)
        x_t_l, target_l = (1 - tb) * x0_l + tb * noise, noise - x0_l
        want = spec.flow_dpo_loss(pred, _predict(cfg, policy, batch, x_t_l, t), target.double(), target_l.double(),
                                  mask, mask, ref_pred_w=_predict(cfg, base, batch, x_t, t),
                                  ref_pred_l=_predict(cfg, base, batch, x_t_l, t), beta=o.beta, **halo)
    reference = None if objective == "sft" else _reference(mode, cfg, base, policy, batch)
    loss, metrics = step_loss(cfg, policy, reference, dict(batch), DRAW)
    if objective != "sft":
        assert abs(want.item() - math.log(2)) > 1e-3  # the policy differs from the reference: wiring shows
    torch.testing.assert_close(loss.double(), want, rtol=1e-4, atol=1e-6)
    loss.backward()  # and it trains the LoRA
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in policy.named_parameters() if "lora_" in n)
