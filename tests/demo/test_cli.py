"""`ipa demo` options: plan overrides, reuse of curated data, bad values named."""

import argparse
import dataclasses
import json

import pytest

from ipa.demo import cli, experiment


def _args(*argv):
    p = argparse.ArgumentParser()
    cli.register(p.add_subparsers())
    return p.parse_args(["demo", *argv])


def test_recipe_names_are_the_experiments():
    assert set(cli.RECIPE_KEYS) == set(experiment.RECIPES)


def test_plan_overrides():
    assert cli.plan_from_args(_args()) == experiment.FULL
    plan = cli.plan_from_args(_args("--steps", "150", "--recipes", "sft_halo,ipa_halo", "--seeds", "0,1"))
    assert (plan.steps, plan.recipes, plan.seeds, plan.betas) == (150, ("sft_halo", "ipa_halo"), (0, 1), ())
    assert [(k, s) for k, _, s in experiment.runs_of(plan)] == [("sft_halo", 0), ("sft_halo", 1),
                                                                ("ipa_halo", 0), ("ipa_halo", 1)]
    plan = cli.plan_from_args(_args("--quick", "--betas", "60"))
    assert plan.betas == (60.0,) and plan.steps == experiment.QUICK.steps


def test_set_any_plan_field():
    plan = cli.plan_from_args(_args("--set", "candidates=16", "--set", "gen_conditions=50", "--set", "lr=1e-3"))
    assert (plan.candidates, plan.gen_conditions, plan.lr) == (16, 50, 1e-3)
    assert cli.plan_from_args(_args("--set", "seeds=[3, 4]")).seeds == (3, 4)


@pytest.mark.parametrize("argv,match", [
    (("--set", "candidats=3"), "^--set: expected FIELD=VALUE with FIELD one of"),
    (("--set", "candidates=many"), "^--set candidates: expected int"),
    (("--recipes", "sft,dpo"), "^--recipes: expected a comma-separated subset"),
    (("--seeds", "a,b"), "^--seeds: expected comma-separated numbers"),
    (("--steps", "0"), "^--steps: must be >= 1"),
])
def test_bad_overrides_name_the_flag(argv, match):
    with pytest.raises(ValueError, match=match):
        cli.plan_from_args(_args(*argv))


def _curated_folder(folder, settings):
    (folder / "curated").mkdir(parents=True)
    (folder / "curated" / "manifest.jsonl").write_text("{}\n")
    (folder / "selection.json").write_text(json.dumps({} if settings is None else {"settings": settings}))


def test_data_from_needs_a_demo_folder_made_with_the_same_settings(tmp_path):
    settings = experiment.generation_settings(experiment.FULL)
    with pytest.raises(ValueError, match="^--data-from: .* holds no curated demo data"):
        cli._copy_data(tmp_path, tmp_path / "out", settings)
    _curated_folder(tmp_path / "old", None)
    with pytest.raises(ValueError, match="records no generation settings"):
        cli._copy_data(tmp_path / "old", tmp_path / "out", settings)
    _curated_folder(tmp_path / "best-of-4", settings)
    wanted = experiment.generation_settings(dataclasses.replace(experiment.FULL, candidates=16))
    with pytest.raises(ValueError, match=r"generated with candidates=4 \(this plan: 16\); drop --data-from"):
        cli._copy_data(tmp_path / "best-of-4", tmp_path / "out", wanted)
    cli._copy_data(tmp_path / "best-of-4", tmp_path / "out", settings)
    assert (tmp_path / "out" / "curated" / "manifest.jsonl").read_text() == "{}\n"


def test_a_run_reuses_curated_samples_only_when_made_with_its_settings(tmp_path, monkeypatch):
    generated = []

    def generate(out, plan, base, log):
        generated.append(plan.candidates)
        _curated_folder(out, experiment.generation_settings(plan, base))  # curated/ was removed first
        return json.loads((out / "selection.json").read_text())

    monkeypatch.setattr(experiment, "self_generate_and_curate", generate)
    log = []
    best_of_16 = dataclasses.replace(experiment.FULL, candidates=16)
    experiment.curated_samples(tmp_path, experiment.FULL, log=log.append)  # nothing there: generate
    experiment.curated_samples(tmp_path, dataclasses.replace(experiment.FULL, steps=150), log=log.append)  # reuse
    experiment.curated_samples(tmp_path, best_of_16, log=log.append)  # other candidates: generate anew
    assert generated == [4, 16]
    assert log == [f"generating anew: the curated samples in {tmp_path} do not fit this plan (they were "
                   "generated with candidates=4 (this plan: 16))"]
    # the base model is part of the settings, by its weights' digest
    other_base = tmp_path / "base2"
    other_base.mkdir()
    (other_base / "config.json").write_text("{}")
    assert experiment.generation_settings(best_of_16, other_base)["base_sha256"] != \
        experiment.generation_settings(best_of_16)["base_sha256"]
