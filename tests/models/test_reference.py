import pytest
import torch

from ipa.models import Reference, add_lora, forward, trainable_parameters
from ipa.ops import flow_ipa_loss

from .conftest import batch_for, tiny

T = torch.tensor([0.3, 0.8])


def policy_step(policy, batch, ref, lr=1e-2):
    """One IPA optimizer step on the policy against `ref`."""
    params = [p for _, p in trainable_parameters(policy)]
    opt = torch.optim.SGD(params, lr=lr)
    noise = torch.randn(batch["x0"].shape, generator=torch.Generator().manual_seed(5))
    x_t = (1 - T.view(-1, 1, 1, 1, 1)) * batch["x0"] + T.view(-1, 1, 1, 1, 1) * noise
    target = noise - batch["x0"]
    pred = forward(policy, "wan-vace", batch, x_t, T)
    ref_err = ref.error(batch, x_t, T, target, batch["hand_mask"])
    loss, _ = flow_ipa_loss(pred, target, T, batch["hand_mask"], ref_error=ref_err)
    loss.backward()
    opt.step()
    opt.zero_grad()


def test_adapter_reference_is_the_base_model_before_and_after_a_policy_step():
    policy = add_lora(tiny("wan-vace", seed=0), rank=4, alpha=4)
    base = tiny("wan-vace", seed=0)  # fresh model, same weights
    ref = Reference.create("adapter", policy=policy)
    batch = batch_for("wan-vace", base)
    x = batch["x0"]
    with torch.no_grad():
        base_out = forward(base, "wan-vace", batch, x, T)
        assert torch.equal(ref.predict(batch, x, T), base_out)
        policy_before = forward(policy, "wan-vace", batch, x, T)
    policy_step(policy, batch, ref)
    with torch.no_grad():
        assert not torch.equal(forward(policy, "wan-vace", batch, x, T), policy_before)
        assert torch.equal(ref.predict(batch, x, T), base_out)
    assert all(p.requires_grad for _, p in trainable_parameters(policy))  # adapter still trains


def test_copy_reference_frozen_and_unchanged_by_policy_step():
    policy = add_lora(tiny("wan-vace", seed=0), rank=4, alpha=4)
    ref = Reference.create("copy", policy=policy)
    assert ref.model is not policy
    assert not any(p.requires_grad for p in ref.model.parameters())
    assert not ref.model.training and not ref.model.gradient_checkpointing
    batch = batch_for("wan-vace", policy)
    x = batch["x0"]
    before = ref.predict(batch, x, T)
    assert torch.equal(before, forward(policy, "wan-vace", batch, x, T).detach())  # same source, same seed
    policy_step(policy, batch, ref)
    assert torch.equal(ref.predict(batch, x, T), before)
    assert not ref.predict(batch, x, T).requires_grad


def test_copy_of_an_unseeded_random_policy_is_refused():
    """Without a seed the copy would draw other random weights, and IPA would start off log 2."""
    with pytest.raises(ValueError, match=r"random weights \(source 'tiny'\) drawn without a seed"):
        Reference.create("copy", policy=tiny("wan-vace", seed=None))


def test_copy_from_source_with_gradient_checkpointing_policy():
    policy = tiny("wan", seed=2, gradient_checkpointing=True)
    ref = Reference.create("copy", family="wan", source="tiny", dtype=torch.float32, seed=2)
    assert policy.gradient_checkpointing and not ref.model.gradient_checkpointing


def test_reference_error_matches_halo_error_of_prediction():
    from ipa.ops import halo_error

    policy = add_lora(tiny("wan-vace"), rank=2)
    ref = Reference.create("adapter", policy=policy)
    batch = batch_for("wan-vace", policy)
    target = torch.randn_like(batch["x0"])
    err = ref.error(batch, batch["x0"], T, target, batch["hand_mask"], hand_weight=5.0)
    want = halo_error(ref.predict(batch, batch["x0"], T), target, batch["hand_mask"], hand_weight=5.0)
    assert err.shape == (2,) and torch.equal(err, want)


def test_bad_modes_raise():
    with pytest.raises(ValueError, match="mode"):
        Reference.create("frozen")
    with pytest.raises(ValueError, match="LoRA"):
        Reference.create("adapter", policy=tiny("wan"))
    with pytest.raises(ValueError, match="store"):
        Reference.create("precomputed")
    with pytest.raises(NotImplementedError):
        Reference().predict({}, None, None)
