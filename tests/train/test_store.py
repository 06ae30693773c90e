"""A precomputed reference store that cannot serve the run is refused before the first step; an
interrupted precompute pass resumes from its partial store only when the settings match."""

import os

import pytest

from ipa.models import ReferenceStore
from ipa.train.config import TrainConfig
from ipa.train.precompute import _agreed_done_samples, _resume, check_store


def _store(**meta):
    store = ReferenceStore(2, **{"seed": 0, "sampling": "uniform", "shift": 1.0, "family": "wan-vace",
                                 "hand_weight": 10.0, "skip_frames": 1, **meta})
    for sid in ("a", "b"):
        for d in range(2):
            store.add(sid, d, 0.5, 1.0)
    return store


def _cfg(**changes):
    cfg = TrainConfig()
    cfg.reference.mode, cfg.reference.store, cfg.reference.draws = "precomputed", "ref.safetensors", 2
    for key, value in changes.items():
        section, name = key.split("__")
        setattr(getattr(cfg, section), name, value)
    return cfg


def test_matching_store_passes():
    check_store(_cfg(), _store(), ["a", "b"])


@pytest.mark.parametrize("changes,sample_ids,match", [
    ({"run__seed": 1}, ["a"], "^run.seed: .* computed with 0, this run has 1"),
    ({"objective__hand_weight": 5.0}, ["a"], "^objective.hand_weight:"),
    ({"objective__shift": 3.0}, ["a"], "^objective.shift:"),
    ({"reference__draws": 3}, ["a"], "^reference.draws: 3 > the 2 draws"),
    ({}, ["a", "c"], r"^reference.store: .* no errors for 1 sample\(s\) .*\['c'\]"),
])
def test_mismatched_store_names_the_key(changes, sample_ids, match):
    with pytest.raises(ValueError, match=match):
        check_store(_cfg(**changes), _store(), sample_ids)


def test_dpo_needs_a_store_with_loser_errors():
    with pytest.raises(ValueError, match=r"^objective.name: dpo needs the reference's errors on the loser latents"):
        check_store(_cfg(objective__name="dpo"), _store(), ["a"])
    pairs = _store()
    for sid in ("a", "b"):
        for d in range(2):
            pairs.add(sid, d, 0.5, 1.0, err_loser=2.0)
    check_store(_cfg(objective__name="dpo"), pairs, ["a", "b"])
    check_store(_cfg(), pairs, ["a", "b"])  # IPA reads the winners' errors of a DPO store


def test_store_of_another_compute_dtype_is_refused():
    fp32_store = _store(compute_dtype="float32")
    check_store(_cfg(), fp32_store, ["a"])
    with pytest.raises(ValueError, match=r"^model.dtype: .* computed in float32, this run computes in bfloat16"):
        check_store(_cfg(deepspeed__bf16=True), fp32_store, ["a"])
    check_store(_cfg(deepspeed__bf16=True), _store(compute_dtype="bfloat16"), ["a"])


# -- resuming an interrupted `ipa precompute-reference` ------------------------------------------

def _partial(tmp_path, n_draws=2, **meta):
    """A partial store of samples a, b as an interrupted pass leaves it (loser errors when
    meta says losers); the path."""
    store = ReferenceStore(n_draws, **{"seed": 0, "sampling": "uniform", "family": "wan-vace", **meta})
    for i, sid in enumerate(("a", "b")):
        for d in range(n_draws):
            store.add(sid, d, 0.25 * (d + 1), 1.5 + i + d, 5.0 + i + d if meta.get("losers") else None)
    return store.save(tmp_path / "ref.safetensors.partial")


def test_resume_loads_the_finished_samples_of_a_matching_partial_store(tmp_path):
    path = _partial(tmp_path)
    store = ReferenceStore(2, seed=0, sampling="uniform", family="wan-vace")
    assert _resume(store, path) == ["a", "b"]
    err, t = store.lookup(["a", "b", "b"], [1, 0, 1])
    assert err.tolist() == [2.5, 2.5, 3.5] and t.tolist() == [0.5, 0.25, 0.5]
    assert _resume(ReferenceStore(2), tmp_path / "absent.partial") == []


def test_resume_keeps_the_loser_errors_of_a_dpo_pass(tmp_path):
    path = _partial(tmp_path, losers=True)
    store = ReferenceStore(2, seed=0, sampling="uniform", family="wan-vace", losers=True)
    assert _resume(store, path) == ["a", "b"]
    assert store.lookup(["a", "b"], [0, 1], loser=True)[0].tolist() == [5.0, 7.0]


@pytest.mark.parametrize("n_draws,meta,match", [
    (2, {"seed": 1}, r"run.seed: 0 there, 1 here"),
    (3, {"seed": 0}, r"--draws: 2 there, 3 here"),
    (2, {"seed": 0, "compute_dtype": "bfloat16"}, r"model.dtype / deepspeed.bf16: None there, 'bfloat16' here"),
    (2, {"seed": 0, "losers": True}, r"loser errors \(objective.name=dpo\): None there, True here"),
])
def test_resume_refuses_a_partial_store_of_other_settings(tmp_path, n_draws, meta, match):
    path = _partial(tmp_path)
    store = ReferenceStore(n_draws, **{"sampling": "uniform", "family": "wan-vace", **meta})
    with pytest.raises(ValueError, match=match + r".*delete it to start over"):
        _resume(store, path)
    assert len(store) == 0 and path.is_file()  # nothing loaded, nothing deleted


def test_resume_names_an_unreadable_partial_store(tmp_path):
    path = tmp_path / "ref.safetensors.partial"
    path.write_bytes(b"not a store")
    with pytest.raises(ValueError, match=r"ref.safetensors.partial'?: not a readable partial reference store"):
        _resume(ReferenceStore(2), path)


def test_rank_0s_resume_verdict_goes_through_the_broadcast(tmp_path, monkeypatch):
    """The done set and the refusal both travel in rank 0's broadcast (one process here; two ranks
    refusing together are in test_distributed)."""
    import torch.distributed as dist

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(29900 + os.getpid() % 90))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        path = _partial(tmp_path)
        assert _agreed_done_samples(ReferenceStore(2, seed=0, sampling="uniform", family="wan-vace"),
                                    path, rank=0) == {"a", "b"}
        with pytest.raises(ValueError, match=r"run.seed: 0 there, 5 here"):
            _agreed_done_samples(ReferenceStore(2, seed=5, sampling="uniform", family="wan-vace"), path, rank=0)
    finally:
        dist.destroy_process_group()
