"""benchmarks/gpu_suite.sh runs only on a lent GPU machine, whose minutes are scarce: what can be
checked without one is checked here (it parses, refuses a bad phase before installing anything,
and its phase limits fit one 10-minute device call with a minute left for the install)."""

import re
import subprocess
from pathlib import Path

SUITE = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_suite.sh"
DEVICE_CALL_S = 600


def test_suite_parses():
    assert subprocess.run(["bash", "-n", str(SUITE)], capture_output=True).returncode == 0


def test_unknown_phase_is_refused_before_the_install(tmp_path):
    proc = subprocess.run(["bash", str(SUITE), "tests", "benchmark"], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path)})
    assert proc.returncode == 2
    assert "unknown phase 'benchmark' (phases: tests ops model tune train)" in proc.stdout
    assert not (tmp_path / "gpu-suite.log").exists()  # nothing ran


def test_phase_limits_fit_one_device_call():
    """The default run (tests, ops, model, tune) fits one call; `train` is a second call."""
    limits = {k: int(v) for k, v in re.findall(r"([A-Z]+_S)=\$\{\1:-(\d+)\}", SUITE.read_text())}
    assert set(limits) == {"TESTS_S", "OPS_S", "MODEL_S", "TUNE_S", "TRAIN_S"}
    assert limits["TESTS_S"] + limits["OPS_S"] + limits["MODEL_S"] + limits["TUNE_S"] <= DEVICE_CALL_S - 60
    assert limits["TRAIN_S"] <= DEVICE_CALL_S - 60
    assert re.search(r"PHASES=\$\{\*:-tests ops model tune\}", SUITE.read_text())


FAKE_PYTHON = """#!/usr/bin/env bash
# Stands in for python3: installs and imports succeed; `-m benchmarks.X --out-dir D` writes D/X.csv
# and then, for the model phase, outlives its time limit.
out=""; prev=""
for a in "$@"; do [ "$prev" = --out-dir ] && out=$a; prev=$a; done
case "$*" in
  *benchmarks.ops*) echo row > "$out/ops-fake.csv" ;;
  *benchmarks.model*) echo row > "$out/model-fake-block.csv"; sleep 30 ;;
esac
exit 0
"""


def test_results_reach_out_after_every_phase_even_when_one_is_cut_off(tmp_path):
    """The device call can be killed at its limit: what the finished phases wrote must already be
    in $OUT, and a phase past its own limit is reported as cut off, the others as ok."""
    fake = tmp_path / "python3"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    out, results = tmp_path / "out", tmp_path / "results"
    results.mkdir()
    proc = subprocess.run(["bash", str(SUITE), "ops", "model"], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "OUT": str(out), "PYTHON": str(fake),
                               "RESULTS": str(results), "MODEL_S": "2"})
    log = (out / "gpu-suite.log").read_text()
    assert proc.returncode == 1, log
    assert "ops: ok" in log and "model: cut off at 2s" in log
    assert (out / "ops-fake.csv").read_text() == "row\n"
    assert (out / "model-fake-block.csv").read_text() == "row\n"  # the cut-off phase's rows too


def test_a_killed_call_keeps_the_finished_phases_results(tmp_path):
    import os
    import signal
    import time

    fake = tmp_path / "python3"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    out, results = tmp_path / "out", tmp_path / "results"
    results.mkdir()
    proc = subprocess.Popen(["bash", str(SUITE), "ops", "model"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True,
                            env={"PATH": "/usr/bin:/bin", "OUT": str(out), "PYTHON": str(fake), "RESULTS": str(results)})
    deadline = time.time() + 30
    while "== model" not in ((out / "gpu-suite.log").read_text() if (out / "gpu-suite.log").exists() else ""):
        assert time.time() < deadline and proc.poll() is None, "the suite never reached its model phase"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # the device tool's limit, mid-phase
    proc.wait()
    assert (out / "ops-fake.csv").read_text() == "row\n"
