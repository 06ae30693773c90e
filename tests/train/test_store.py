"""A precomputed reference store that cannot serve the run is refused before the first step; an
interrupted precompute pass resumes from its partial store only when the settings match."""

from pathlib import Path

import pytest

from ipa.models import ReferenceStore
from ipa.train.config import TrainConfig
from ipa.train.precompute import _atomic_save, _on_rank_0, _resume, check_store

from .ranks import run_ranks


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

DIGESTS = {"a": "aa" * 32, "b": "bb" * 32}  # the dataset manifest's sha256 per sample


def _partial(tmp_path, n_draws=2, **meta):
    """A partial store of samples a, b as an interrupted pass leaves it (loser errors when
    meta says losers); the path."""
    store = ReferenceStore(n_draws, **{"seed": 0, "sampling": "uniform", "family": "wan-vace", **meta})
    for i, sid in enumerate(("a", "b")):
        for d in range(n_draws):
            store.add(sid, d, 0.25 * (d + 1), 1.5 + i + d, 5.0 + i + d if meta.get("losers") else None)
        store.set_digest(sid, DIGESTS[sid])
    return store.save(tmp_path / "ref.safetensors.partial")


def test_resume_loads_the_finished_samples_of_a_matching_partial_store(tmp_path):
    path = _partial(tmp_path)
    store = ReferenceStore(2, seed=0, sampling="uniform", family="wan-vace")
    assert _resume(store, path, DIGESTS) == ["a", "b"]
    err, t = store.lookup(["a", "b", "b"], [1, 0, 1])
    assert err.tolist() == [2.5, 2.5, 3.5] and t.tolist() == [0.5, 0.25, 0.5]
    assert store.digest("b") == DIGESTS["b"]
    assert _resume(ReferenceStore(2), tmp_path / "absent.partial", DIGESTS) == []


def test_resume_computes_again_the_samples_whose_data_changed(tmp_path, capsys):
    # b re-encoded (or its hand mask redone) since the interrupted pass; c is new; a is unchanged
    path = _partial(tmp_path)
    store = ReferenceStore(2, seed=0, sampling="uniform", family="wan-vace")
    assert _resume(store, path, {"a": DIGESTS["a"], "b": "cc" * 32, "c": "dd" * 32}) == ["a"]
    assert store.sample_ids() == ["a"] and store.digest("b") is None
    assert "1 sample(s) differ from data.path's manifest (e.g. 'b')" in capsys.readouterr().out


def test_resume_keeps_the_loser_errors_of_a_dpo_pass(tmp_path):
    path = _partial(tmp_path, losers=True)
    store = ReferenceStore(2, seed=0, sampling="uniform", family="wan-vace", losers=True)
    assert _resume(store, path, DIGESTS) == ["a", "b"]
    assert store.lookup(["a", "b"], [0, 1], loser=True)[0].tolist() == [5.0, 7.0]


@pytest.mark.parametrize("n_draws,meta,match", [
    (2, {"seed": 1}, r"run.seed: 0 there, 1 here"),
    (3, {"seed": 0}, r"--draws: 2 there, 3 here"),
    (2, {"seed": 0, "compute_dtype": "bfloat16"}, r"model.dtype / deepspeed.bf16: None there, 'bfloat16' here"),
    (2, {"seed": 0, "losers": True}, r"loser errors \(objective.name=dpo\): None there, True here"),
    # the settings do not tell two checkpoints apart: a store must not mix two models' errors
    (2, {"seed": 0, "source": "/ckpt/sft"}, r"model.source: None there, '/ckpt/sft' here.*a symlink will do"),
])
def test_resume_refuses_a_partial_store_of_other_settings(tmp_path, n_draws, meta, match):
    path = _partial(tmp_path)
    store = ReferenceStore(n_draws, **{"sampling": "uniform", "family": "wan-vace", **meta})
    with pytest.raises(ValueError, match=match + r".*delete it to start over"):
        _resume(store, path, DIGESTS)
    assert len(store) == 0 and path.is_file()  # nothing loaded, nothing deleted


def test_resume_names_an_unreadable_partial_store(tmp_path):
    path = tmp_path / "ref.safetensors.partial"
    path.write_bytes(b"not a store")
    with pytest.raises(ValueError, match=r"ref.safetensors.partial'?: not a readable partial reference store"):
        _resume(ReferenceStore(2), path, DIGESTS)


def _verdicts_on_rank(rank, partial_paths, unwritable):
    """What each rank makes of: a matching partial store, one of another seed, a failure on rank 0,
    a write that fails on rank 0."""
    cases = [lambda seed=seed: _resume(ReferenceStore(2, seed=seed, sampling="uniform", family="wan-vace"),
                                       Path(partial_paths[rank]), DIGESTS) for seed in (0, 5)]
    cases += [lambda: _resume(None, Path(partial_paths[rank]), DIGESTS),
              lambda: _atomic_save(ReferenceStore(1), Path(unwritable))]
    out = []
    for case in cases:
        try:
            out.append(_on_rank_0(case))
        except ValueError as e:
            out.append(str(e))
    return out


@pytest.mark.multiprocess
def test_every_rank_takes_rank_0s_verdict_on_the_store(tmp_path):
    """Rank 1 reads and writes no file (here its disk has none): the done set, a refusal, an
    unexpected error and a failed write on rank 0 all reach it through the broadcast, so both ranks
    go on or stop together instead of waiting in the next collective."""
    paths = [str(_partial(tmp_path)), str(tmp_path / "node1-local" / "ref.safetensors.partial")]
    (tmp_path / "a-file").write_text("")
    for kind, (done, refused, failed, unwritten) in run_ranks(2, _verdicts_on_rank, paths,
                                                              str(tmp_path / "a-file" / "ref.safetensors")):
        assert kind == "ok" and done == ["a", "b"]
        assert "run.seed: 0 there, 5 here" in refused and failed.startswith("AttributeError: ")
        assert unwritten.startswith(("FileExistsError: ", "NotADirectoryError: "))


def test_atomic_save_leaves_the_file_whole_and_no_temporary(tmp_path):
    store = ReferenceStore(1, seed=0)
    store.add("a", 0, 0.5, 1.0)
    store.set_digest("a", DIGESTS["a"])
    _atomic_save(store, tmp_path / "ref.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["ref.safetensors"]
    again = ReferenceStore.load(tmp_path / "ref.safetensors")
    assert again.lookup(["a"], [0])[0].tolist() == [1.0] and again.digest("a") == DIGESTS["a"]


def test_training_refuses_a_store_computed_on_other_data():
    store = _store()
    store.set_digest("a", DIGESTS["a"])
    check_store(_cfg(), store, ["a", "b"], {"a": DIGESTS["a"], "b": "ee" * 32})  # b: no digest recorded
    with pytest.raises(ValueError, match=r"^reference.store: .* holds errors computed on other data for 1 "
                                         r"sample\(s\) of data.path .*\['a'\]"):
        check_store(_cfg(), store, ["a", "b"], {"a": "ff" * 32, "b": "ee" * 32})
