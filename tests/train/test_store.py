"""A precomputed reference store that cannot serve the run is refused before the first step."""

import pytest

from ipa.models import ReferenceStore
from ipa.train.config import TrainConfig
from ipa.train.precompute import check_store


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


def test_store_of_another_compute_dtype_is_refused():
    fp32_store = _store(compute_dtype="float32")
    check_store(_cfg(), fp32_store, ["a"])
    with pytest.raises(ValueError, match=r"^model.dtype: .* computed in float32, this run computes in bfloat16"):
        check_store(_cfg(deepspeed__bf16=True), fp32_store, ["a"])
    check_store(_cfg(deepspeed__bf16=True), _store(compute_dtype="bfloat16"), ["a"])
