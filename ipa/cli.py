"""The `ipa` command.

Each command group lives beside the code it drives: a module listed in COMMANDS defines
`register(subparsers)`, adds its parser(s) and sets `func(args) -> int | None` on them. Modules are
imported only when their group is asked for, so `ipa --help` stays fast and a broken optional
dependency only breaks its own command.
"""

import argparse
import importlib
import sys

# group name -> (module, one-line help)
COMMANDS = {
    "bench": ("ipa.bench", "run a benchmark (ops, model, train, hands) and write its CSV (and plot) under benchmarks/results/"),
    "hands": ("ipa.hands.cli", "hand masks: detector model, detect, from-keypoints, preview"),
    "data": ("ipa.data.cli", "datasets: synth, check, prepare (videos + poses -> conditions)"),
    "train": ("ipa.train.cli", "IPA / SFT / DPO post-training on DeepSpeed ZeRO"),
    "precompute-reference": ("ipa.train.cli", "reference errors over deterministic draws (no reference at train time)"),
    "eval": ("ipa.eval.cli", "metrics report: SSIM/PSNR/LPIPS/FVD and hand-region metrics"),
    "generate": ("ipa.generate", "sample K candidates per condition with the policy (self-generated data)"),
    "select": ("ipa.select.cli", "pick good candidates: auto hand scores, review page; curate them into a training set"),
    "demo": ("ipa.demo.cli", "end-to-end miniature of the paper's ablation on CPU (writes demo_out/)"),
}


class _Groups:
    """The subparsers action as the group modules see it: a group's parser gets its one-line help
    from COMMANDS (one source, also what `ipa --help` lists without importing the group)."""

    def __init__(self, action):
        self._action = action

    def add_parser(self, name, **kwargs):
        return self._action.add_parser(name, **{**kwargs, "help": COMMANDS[name][1]})


def build_parser(only=None):
    """The parser; `only` names the group whose module is imported (None: all of them)."""
    parser = argparse.ArgumentParser(prog="ipa", description="Implicit Preference Alignment for "
                                     "human image animation.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = {m for name, (m, _) in COMMANDS.items() if only is None or name == only}
    for module in sorted(modules):
        importlib.import_module(module).register(_Groups(sub))  # a module may register several groups
    for name, (_, help_) in COMMANDS.items():
        if name not in sub.choices:
            sub.add_parser(name, help=help_)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    group = argv[0] if argv and argv[0] in COMMANDS else None
    parser = build_parser(only=group or "")
    args, extra = parser.parse_known_args(argv)
    take_extra = getattr(args, "take_extra", None)  # a command's own use of what argparse left over
    if extra and not (take_extra and take_extra(args, extra)):
        parser.parse_args(argv)  # argparse's own error for what is left
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0 if not argv else 2
    return args.func(args) or 0


def entry():
    """Console entry point: a user error (bad argument, bad config, missing file) prints one line
    naming what is wrong and exits with status 2, without a traceback."""
    try:
        return main()
    except (ValueError, FileNotFoundError) as e:
        print(f"ipa: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(entry())
