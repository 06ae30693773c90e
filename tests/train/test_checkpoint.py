"""Checkpoint bookkeeping that needs no process group: the resume layout check."""

import pytest
import torch

from ipa.train import checkpoint


def _fake_checkpoint(out, data):
    root = checkpoint.checkpoint_dir(out) / "step00000003"
    root.mkdir(parents=True)
    torch.save(checkpoint.rank_state(data), root / "rank0_state.pt")
    (checkpoint.checkpoint_dir(out) / "latest").write_text("step00000003\n")


def test_resume_refuses_a_different_layout(tmp_path):
    layout = {"world_size": 2, "micro_batch": 2, "grad_accum": 1}
    _fake_checkpoint(tmp_path, {**layout, "consumed": 6})
    assert checkpoint.latest_tag(tmp_path) == "step00000003"
    checkpoint.check_layout(tmp_path, layout)  # same layout: fine
    with pytest.raises(ValueError, match="^data.micro_batch: the checkpoint step00000003 was written with 2"):
        checkpoint.check_layout(tmp_path, {**layout, "micro_batch": 1})
    with pytest.raises(ValueError, match="^number of ranks: .* with 2, this run has 4"):
        checkpoint.check_layout(tmp_path, {**layout, "world_size": 4})


def test_rank_state_holds_every_rng():
    state = checkpoint.rank_state({"consumed": 0})
    assert {"python", "numpy", "torch"} <= set(state["rng"]) and state["data"] == {"consumed": 0}
