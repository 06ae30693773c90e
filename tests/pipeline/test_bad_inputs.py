"""Malformed candidate folders, selections and report folders are named in the error, not met with a
KeyError or a bare JSON message from deep inside."""

import json

import pytest

from ipa.select.candidates import load_candidates, read_selection, run_info


def _candidates(tmp_path, run_json='{"conditions": "conds"}', folder="cand-0", meta="{}"):
    root = tmp_path / "cands"
    (root / "clip_a" / folder).mkdir(parents=True)
    (root / "run.json").write_text(run_json)
    for name in ("video.mp4", "latents.safetensors"):
        (root / "clip_a" / folder / name).write_bytes(b"")
    (root / "clip_a" / folder / "meta.json").write_text(meta)
    return root


def test_candidate_folders_that_ipa_generate_did_not_write(tmp_path):
    assert [c.key for c in load_candidates(_candidates(tmp_path / "ok"))] == ["clip_a/cand-0"]
    with pytest.raises(ValueError, match=r"run.json' names no 'conditions' dataset"):
        run_info(_candidates(tmp_path / "a", run_json="{}"))
    with pytest.raises(ValueError, match=r"run.json' is not valid JSON"):
        run_info(_candidates(tmp_path / "b", run_json="{oops"))
    with pytest.raises(ValueError, match=r"meta.json' is not valid JSON"):
        load_candidates(_candidates(tmp_path / "c", meta="{"))
    with pytest.raises(ValueError, match=r"cand-x': expected cand-<number>"):
        load_candidates(_candidates(tmp_path / "d", folder="cand-x"))


def test_selection_entries_must_be_mappings(tmp_path):
    path = tmp_path / "sel.json"
    path.write_text(json.dumps({"candidates": {"clip_a/cand-0": True}}))
    with pytest.raises(ValueError, match=r"entry 'clip_a/cand-0' must be a mapping like"):
        read_selection(path)


def test_select_auto_refuses_a_negative_top(tmp_path):
    from ipa.cli import main

    with pytest.raises(ValueError, match=r"^--top: must be >= 0 \(0: no limit\), got -1"):
        main(["select", "auto", "--candidates", str(tmp_path), "--out", str(tmp_path / "s.json"), "--top", "-1"])


def test_eval_report_into_a_file_is_refused(tmp_path):
    from ipa.eval.protocol import Protocol
    from ipa.eval.report import write_report

    (tmp_path / "report.npy").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"^--out: .*report.npy' is a file; give a folder"):
        write_report([], {}, Protocol(), tmp_path / "report.npy")
    assert (tmp_path / "report.npy").read_bytes() == b"x"
