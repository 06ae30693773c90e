"""The `ipa` command's groups: one help line each, from `ipa.cli.COMMANDS`, naming every subcommand."""

import argparse

import pytest

from ipa.cli import COMMANDS, build_parser


def _groups(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help for a in action._choices_actions}
    return action.choices, helps


def test_every_group_is_registered_with_its_one_line_help():
    parsers, helps = _groups(build_parser())
    assert set(parsers) == set(COMMANDS)
    assert helps == {name: help_ for name, (_, help_) in COMMANDS.items()}


@pytest.mark.parametrize("name", ["bench", "hands", "data", "select"])  # the groups with subcommands
def test_a_group_help_names_each_of_its_subcommands(name):
    parsers, _ = _groups(build_parser(only=name))  # only this group's module imported, as `ipa NAME` does
    group = parsers[name]
    # subcommands are subparsers, or (bench) the choices of its first positional
    commands = next(a.choices for a in group._actions if a.choices and not a.option_strings)
    assert len(commands) >= 2
    for command in commands:
        assert command in COMMANDS[name][1], f"`ipa --help` line of {name!r} does not mention {command!r}"


def _parsed(argv, monkeypatch):
    """What `ipa ...` (argv[0]: the command) hands its command: the parsed arguments."""
    from ipa import cli

    seen = {}
    real = cli.build_parser

    def build_parser(only=None):
        parser = real(only)
        for sub in _groups(parser)[0].values():
            sub.set_defaults(func=lambda a: seen.setdefault("args", a) and 0)
        return parser

    monkeypatch.setattr(cli, "build_parser", build_parser)
    assert cli.main(argv) == 0
    return seen["args"]


@pytest.mark.parametrize("command", ["train", "precompute-reference"])
def test_overrides_may_come_between_options(command, monkeypatch):
    """argparse takes only the first run of positionals: `run.steps=2` after `--output-dir` used to
    be refused as an unrecognized argument; both commands and `python -m ipa.train` take it."""
    from ipa.train import cli as train_cli

    argv = ["--config", "c.yaml", "objective.beta=100", "--output-dir", "runs/x", "run.steps=2", "run.seed=3"]
    want = ["objective.beta=100", "run.steps=2", "run.seed=3"]
    args = _parsed([command, *argv], monkeypatch)
    assert args.overrides == want and args.output_dir == "runs/x"
    with pytest.raises(SystemExit):  # anything else left over is still argparse's error
        _parsed([command, *argv, "--bogus"], monkeypatch)
    # the launchers' entry point (torchrun -m ipa.train, and what `--nproc` relaunches)
    kind = "precompute" if command == "precompute-reference" else "train"
    monkeypatch.setattr(train_cli, f"run_{kind}", lambda a, argv: a)
    assert train_cli.module_main(kind, argv).overrides == want
