"""Every benchmark refuses a count or a budget out of range, naming the flag (argparse exits 2)."""

import importlib

import pytest


@pytest.mark.parametrize("bench,flags,message", [
    ("ops", ["--budget", "-1"], "argument --budget: expected a finite number >= 0, got '-1'"),
    ("ops", ["--rotate-mb", "0"], "argument --rotate-mb: expected a finite number > 0, got '0'"),
    ("model", ["--budget", "nan"], "argument --budget: expected a finite number >= 0, got 'nan'"),
    ("model", ["--budget", "inf"], "argument --budget: expected a finite number >= 0, got 'inf'"),
    ("ops", ["--min-reps", "0"], "argument --min-reps: expected an int >= 1, got '0'"),
    ("model", ["--rank", "0"], "argument --rank: expected an int >= 1, got '0'"),
    ("hands", ["--detect-frames", "-1"], "argument --detect-frames: expected an int >= 0, got '-1'"),
    ("train", ["--steps", "x"], "argument --steps: expected an int >= 1, got 'x'"),
])
def test_benchmark_flags_out_of_range_are_refused_naming_the_flag(bench, flags, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(f"benchmarks.{bench}").main(flags)
    assert exit_.value.code == 2 and message in capsys.readouterr().err
