import subprocess
import sys
import textwrap

import pytest
import torch

from ipa.models import (PrecomputedReference, Reference, ReferenceStore, draw_noise_and_t, flow_draw,
                        precompute_reference_errors)
from ipa.models.draws import draw_seed

from .conftest import REPO_ROOT, batch_for, tiny

SETTINGS = {"seed": 11, "sampling": "logit-normal", "shift": 3.0}


def precompute(n_draws=2):
    """The offline pass on a tiny VACE model over two batches (four samples)."""
    model = tiny("wan-vace", seed=0).requires_grad_(False).eval()
    batches = [batch_for("wan-vace", model, seed=s) for s in (1, 2)]
    return precompute_reference_errors(model, "wan-vace", batches, n_draws=n_draws, **SETTINGS), batches, model


def test_draws_are_keyed_by_sample_and_draw_and_seed():
    a, ta = draw_noise_and_t("s0", 0, (2, 3), seed=1)
    b, tb = draw_noise_and_t("s0", 0, (2, 3), seed=1)
    assert torch.equal(a, b) and torch.equal(ta, tb)
    for other in (("s1", 0, 1), ("s0", 1, 1), ("s0", 0, 2)):
        c, _ = draw_noise_and_t(other[0], other[1], (2, 3), seed=other[2])
        assert not torch.equal(a, c)
    _, t_big = draw_noise_and_t("s0", 0, (4, 5, 6), seed=1)
    assert torch.equal(ta, t_big)  # t does not depend on the latent shape


def test_sampling_modes_and_shift():
    ts = torch.stack([draw_noise_and_t(f"s{i}", 0, (1,), seed=0)[1] for i in range(400)])
    assert 0 <= ts.min() and ts.max() < 1 and abs(ts.mean() - 0.5) < 0.06
    shifted = torch.stack([draw_noise_and_t(f"s{i}", 0, (1,), seed=0, shift=3.0)[1] for i in range(400)])
    assert (shifted >= ts).all() and shifted.mean() > ts.mean() + 0.1  # shift > 1 moves t toward noise
    ln = torch.stack([draw_noise_and_t(f"s{i}", 0, (1,), seed=0, sampling="logit-normal")[1] for i in range(400)])
    assert abs(ln.mean() - 0.5) < 0.05 and ln.std() < ts.std()  # logit-normal concentrates mid-range
    with pytest.raises(ValueError, match="sampling"):
        draw_noise_and_t("s", 0, (1,), seed=0, sampling="beta")
    with pytest.raises(ValueError, match="shift"):
        draw_noise_and_t("s", 0, (1,), seed=0, shift=0)


def test_flow_draw_builds_flow_matching_inputs():
    model = tiny("wan")
    batch = batch_for("wan", model)
    d = flow_draw(batch, seed=3, draws=[0, 4])
    t = d["t"].view(-1, 1, 1, 1, 1)
    assert torch.allclose(d["noisy"], (1 - t) * batch["x0"] + t * d["noise"])
    assert torch.allclose(d["target"], d["noise"] - batch["x0"])
    n1, t1 = draw_noise_and_t(batch["sample_id"][1], 4, batch["x0"].shape[1:], seed=3)
    assert torch.equal(d["noise"][1], n1) and d["t"][1] == t1


def test_precomputed_store_bit_identical_across_runs_and_roundtrip(tmp_path):
    store_a, batches, _ = precompute()
    store_b, _, _ = precompute()
    assert len(store_a) == 4 and store_a.sample_ids() == store_b.sample_ids()
    for sid in store_a.sample_ids():
        for d in range(2):
            ea, ta = store_a.lookup([sid], [d])
            eb, tb = store_b.lookup([sid], [d])
            assert torch.equal(ea, eb) and torch.equal(ta, tb)
    loaded = ReferenceStore.load(store_a.save(tmp_path / "ref.safetensors"))
    assert loaded.meta == store_a.meta and loaded.n_draws == 2
    ids = store_a.sample_ids()
    assert all(torch.equal(x, y) for x, y in zip(loaded.lookup(ids, [1] * 4), store_a.lookup(ids, [1] * 4)))


def test_precomputed_reference_equals_online_reference_error():
    store, batches, model = precompute()
    ref = Reference.create("precomputed", store=store)
    online = Reference.create("copy", family="wan-vace", source="tiny", dtype=torch.float32, seed=0)
    batch = {**batches[1], "draw": torch.tensor([1, 0])}
    d = flow_draw(batch, **ref.draw_settings)
    got = ref.error(batch, d["noisy"], d["t"], d["target"], batch["hand_mask"])
    want = online.error(batch, d["noisy"], d["t"], d["target"], batch["hand_mask"])
    assert torch.equal(got, want)


def test_precomputed_loser_errors_equal_the_online_reference_on_the_loser(tmp_path):
    """DPO pairs: the loser latent under its winner's noise and t, stored apart and round-tripped."""
    model = tiny("wan-vace", seed=0).requires_grad_(False).eval()
    batch = batch_for("wan-vace", model, seed=1)
    batch["x0_loser"] = batch["x0"] + 0.5 * torch.randn(batch["x0"].shape, generator=torch.Generator().manual_seed(2))
    # batches from a generator (read once, like a DataLoader's)
    store = precompute_reference_errors(model, "wan-vace", (b for b in [batch]), n_draws=2, losers=True, **SETTINGS)
    store = ReferenceStore.load(store.save(tmp_path / "pairs.safetensors"))
    assert store.sample_ids() == sorted(batch["sample_id"])
    ref = Reference.create("precomputed", store=store)
    online = Reference.create("copy", family="wan-vace", source="tiny", dtype=torch.float32, seed=0)
    batch["draw"] = torch.tensor([1, 0])
    d = flow_draw(batch, **ref.draw_settings)
    noise, t = d["noise"].float(), d["t"].view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(d["noisy_loser"], (1 - t) * batch["x0_loser"] + t * noise, rtol=0, atol=1e-6)
    torch.testing.assert_close(d["target_loser"], noise - batch["x0_loser"], rtol=0, atol=1e-6)
    got = ref.error(batch, d["noisy_loser"], d["t"], d["target_loser"], batch["hand_mask"], loser=True)
    want = online.error(batch, d["noisy_loser"], d["t"], d["target_loser"], batch["hand_mask"])
    assert torch.equal(got, want) and not torch.equal(got, ref.error(batch, d["noisy"], d["t"], d["target"],
                                                                     batch["hand_mask"]))
    winners_only = precompute_reference_errors(model, "wan-vace", [batch], n_draws=1, **SETTINGS)
    assert store.has_losers and not winners_only.has_losers
    with pytest.raises(ValueError, match=r"no loser error for sample .* \(precompute with objective.name=dpo"):
        winners_only.lookup(batch["sample_id"], [0, 0], loser=True)
    with pytest.raises(ValueError, match=r"losers=True needs batch\['x0_loser'\]"):
        precompute_reference_errors(model, "wan-vace", [batch_for("wan-vace", model)], n_draws=1, losers=True,
                                    **SETTINGS)


def test_precomputed_reference_rejects_mismatched_draws():
    store, batches, _ = precompute(n_draws=1)
    ref = PrecomputedReference(store)
    batch = batches[0]
    d = flow_draw(batch, **ref.draw_settings)
    with pytest.raises(ValueError, match="timesteps"):
        ref.error(batch, d["noisy"], d["t"] * 0.5, d["target"], batch["hand_mask"])
    with pytest.raises(ValueError, match="hand_weight"):
        ref.error(batch, d["noisy"], d["t"], d["target"], batch["hand_mask"], hand_weight=3.0)
    with pytest.raises(ValueError, match="draw 3"):
        ref.error({**batch, "draw": torch.tensor([3, 0])}, d["noisy"], d["t"], d["target"], batch["hand_mask"])
    with pytest.raises(ValueError, match="sample_id"):
        ref.error({"x0": batch["x0"]}, d["noisy"], d["t"], d["target"])


def test_store_load_rejects_missing_and_foreign_files(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(ValueError, match="does not exist"):
        ReferenceStore.load(tmp_path / "none.safetensors")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not an ipa reference store"):
        ReferenceStore.load(tmp_path / "other.safetensors")


def test_draws_and_errors_bit_identical_in_another_process(tmp_path):
    store, batches, _ = precompute()
    noise, t = draw_noise_and_t("synthetic-1-0", 1, (16, 3, 4, 4), seed=11, sampling="logit-normal", shift=3.0)
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(REPO_ROOT)!r})
        torch.set_num_threads({torch.get_num_threads()})
        from ipa.models import draw_noise_and_t
        from tests.models.test_draws import precompute
        noise, t = draw_noise_and_t("synthetic-1-0", 1, (16, 3, 4, 4), seed=11, sampling="logit-normal", shift=3.0)
        torch.save({{"noise": noise, "t": t}}, {str(tmp_path / "draw.pt")!r})
        precompute()[0].save({str(tmp_path / "store.safetensors")!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO_ROOT, timeout=120)
    other = torch.load(tmp_path / "draw.pt")
    assert torch.equal(other["noise"], noise) and torch.equal(other["t"], t)
    theirs = ReferenceStore.load(tmp_path / "store.safetensors")
    ids = store.sample_ids()
    for d in range(2):
        mine_e, mine_t = store.lookup(ids, [d] * 4)
        their_e, their_t = theirs.lookup(ids, [d] * 4)
        assert torch.equal(mine_e, their_e) and torch.equal(mine_t, their_t)


def test_draw_seed_is_a_fixed_function():
    # Pinned value: a change here would silently invalidate every precomputed store on disk.
    assert draw_seed(0, "a", 0) == 1281120563738345437
    assert 0 <= draw_seed(2**40, "x" * 1000, 10**6) < 2**63


def test_store_file_round_trip_and_the_first_format(tmp_path):
    from safetensors.torch import save_file

    store = ReferenceStore(2, seed=3, losers=True)
    store.add("a", 0, 0.25, 1.0, 5.0)
    store.add("b", 1, 0.75, 2.0)  # no loser error, draw 0 not computed, no digest
    store.set_digest("a", "ab" * 32)
    again = ReferenceStore.load(store.save(tmp_path / "s.safetensors"))
    assert again.meta == store.meta and again.sample_ids() == ["a", "b"]
    assert again.lookup(["a", "b"], [0, 1])[0].tolist() == [1.0, 2.0]
    assert again.lookup(["a"], [0], loser=True)[0].tolist() == [5.0]
    with pytest.raises(ValueError, match="no loser error for sample 'b' draw 1"):
        again.lookup(["b"], [1], loser=True)
    with pytest.raises(ValueError, match="no error for sample 'b' draw 0"):
        again.lookup(["b"], [0])
    assert again.digest("a") == "ab" * 32 and again.digest("b") is None
    assert len(ReferenceStore.load(ReferenceStore(2).save(tmp_path / "empty.safetensors"))) == 0
    # stores written before the tables: one tensor per sample and kind
    save_file({"err/a": torch.tensor([1.0, 2.0]), "t/a": torch.tensor([0.1, 0.2])}, str(tmp_path / "v1.safetensors"),
              metadata={ReferenceStore.META_KEY: '{"n_draws": 2, "seed": 3}'})
    old = ReferenceStore.load(tmp_path / "v1.safetensors")
    assert old.meta == {"seed": 3} and old.lookup(["a"], [1])[0].tolist() == [2.0] and old.digest("a") is None
