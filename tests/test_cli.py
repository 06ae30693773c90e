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
