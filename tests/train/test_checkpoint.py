"""Checkpoint bookkeeping that needs no process group: the resume layout check."""

import json

import pytest
import torch

from ipa.train import checkpoint

from .ranks import run_ranks


def _fake_checkpoint(out, data):
    root = checkpoint.checkpoint_dir(out) / "step00000003"
    root.mkdir(parents=True)
    for rank in range(data["world_size"]):
        torch.save(checkpoint.rank_state(data), root / f"rank{rank}_state.pt")
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
    # a checkpoint missing a rank's state is refused (by every rank alike), not resumed half-way
    (checkpoint.checkpoint_dir(tmp_path) / "step00000003" / "rank1_state.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"step00000003 .* lacks .* of ranks 1$"):
        checkpoint.check_layout(tmp_path, layout)


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


def test_runlog_resume_rewrite_is_atomic(tmp_path, monkeypatch):
    """A kill while the resume drops later steps keeps the whole old log (it was truncated in place)."""
    from ipa.train import logging as run_logging

    old = "".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 6))
    (tmp_path / "metrics.jsonl").write_text(old)

    def killed(src, dst):
        raise KeyboardInterrupt  # stands in for a kill between writing the new log and renaming it

    monkeypatch.setattr(run_logging.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        run_logging.RunLog(tmp_path, total_steps=6, start_step=2)
    assert (tmp_path / "metrics.jsonl").read_text() == old


def test_config_of_a_resume_keeps_the_one_earlier_steps_ran_with(tmp_path, capsys):
    from ipa.train.logging import write_config

    first = "objective:\n  beta: 600.0\nrun:\n  resume: false\n  steps: 4\n"
    write_config(tmp_path, first, 0)
    resumed = first.replace("resume: false", "resume: true")
    write_config(tmp_path, resumed, 4)  # resuming is no change
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"] and not capsys.readouterr().err
    write_config(tmp_path, resumed.replace("600.0", "100.0").replace("steps: 4", "steps: 8"), 4)
    assert (tmp_path / "config.until-step00000004.yaml").read_text() == resumed
    assert "beta: 100.0" in (tmp_path / "config.yaml").read_text()
    assert "(objective.beta: 600.0 -> 100.0; run.steps: 4 -> 8)" in capsys.readouterr().err


def test_ranks_by_value_names_runs_of_ranks():
    assert checkpoint._ranks_by_value(["a", "a", None, "a", None, None]) == "a on ranks 0-1, 3; none on ranks 2, 4-5"
    assert checkpoint._rank_spans([0, 1, 2, 3, 6, 8, 9]) == "0-3, 6, 8-9"


class _Engine:
    """What `checkpoint.load` asks of a DeepSpeed engine, with no weights to restore."""
    module = torch.nn.Linear(1, 1)

    def load_checkpoint(self, load_dir, tag, load_module_strict):
        return load_dir, {"step": int(tag.removeprefix("step"))}


def _resume_on_rank(rank, dirs):
    tag = checkpoint.agreed_latest_tag(dirs[rank])
    return tag, checkpoint.load(_Engine(), dirs[rank])


def _run_ranks(dirs):
    return [(kind, *value) if kind == "ok" else (kind, value)
            for kind, value in run_ranks(len(dirs), _resume_on_rank, [str(d) for d in dirs])]


@pytest.mark.multiprocess
def test_every_rank_refuses_checkpoints_that_not_all_ranks_see(tmp_path):
    layout = {"world_size": 2, "micro_batch": 2, "grad_accum": 1}
    shared = tmp_path / "shared"
    _fake_checkpoint(shared, {**layout, "consumed": 6})
    assert _run_ranks([shared] * 2) == [("ok", "step00000003", 3)] * 2
    # rank 1 on a node-local disk without the checkpoint: both ranks stop, with the same message
    for kind, message in _run_ranks([shared, tmp_path / "node1-local"]):
        assert kind == "ValueError", message
        assert "the ranks see different checkpoints (step00000003 on ranks 0; none on ranks 1)" in message
        assert "one directory every node sees" in message
