"""Checkpoint bookkeeping that needs no process group: the resume layout check."""

import json

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


def test_runlog_resume_drops_later_steps_and_a_line_cut_by_a_kill(tmp_path):
    from ipa.train.logging import RunLog, read_metrics

    rows = [{"step": s, "loss": 0.5 / s} for s in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "lo')
    log = RunLog(tmp_path, total_steps=6, start_step=2)  # resumed from the step-2 checkpoint
    log.log({"step": 3, "loss": 0.25})
    log.close()
    assert read_metrics(tmp_path / "metrics.jsonl") == rows[:2] + [{"step": 3, "loss": 0.25}]
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        read_metrics(tmp_path / "metrics.jsonl")
