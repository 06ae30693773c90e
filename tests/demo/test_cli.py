"""`ipa demo` options: plan overrides, reuse of curated data, bad values named."""

import argparse

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


def test_data_from_needs_a_demo_folder(tmp_path):
    with pytest.raises(ValueError, match="^--data-from: .* holds no curated demo data"):
        cli._copy_data(tmp_path, tmp_path / "out")
    (tmp_path / "curated").mkdir()
    (tmp_path / "curated" / "manifest.jsonl").write_text("{}\n")
    (tmp_path / "selection.json").write_text("{}")
    cli._copy_data(tmp_path, tmp_path / "out")
    assert (tmp_path / "out" / "curated" / "manifest.jsonl").read_text() == "{}\n"
