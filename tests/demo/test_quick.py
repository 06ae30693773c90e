"""`ipa demo --quick`: the whole chain (generate, select, curate, 2-rank training, eval, report)."""

import json

import pytest

from ipa.cli import main


@pytest.mark.slow
@pytest.mark.multiprocess
def test_quick_demo_chain(tmp_path):
    out = tmp_path / "demo_out"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    keys = {(r["key"], r["seed"]) for r in results["runs"]}
    assert keys == {("base", 0), ("sft", 0), ("ipa_halo", 0)}
    for r in results["runs"]:
        assert 0 < r["mean"]["hand_psnr"] < 100 and 0 < r["mean"]["nonhand_psnr"] < 100
    assert (out / "curated" / "manifest.jsonl").read_text().count("\n") == 3
    for key in ("sft", "ipa_halo"):
        rows = [json.loads(line) for line in (out / "runs" / f"{key}-s0" / "metrics.jsonl").read_text().splitlines()]
        assert len(rows) == 2
    ipa_rows = (out / "runs" / "ipa_halo-s0" / "metrics.jsonl").read_text().splitlines()
    assert abs(json.loads(ipa_rows[0])["loss"] - 0.6931) < 1e-3  # policy == reference at step 0: log 2
    assert "| IPA + HALO |" in (out / "results.md").read_text()
    for png in ("ablation.png", "hand_crops.png"):
        assert (out / png).stat().st_size > 1000
