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
    assert "unknown phase 'benchmark' (phases: tests ops model train)" in proc.stdout
    assert not (tmp_path / "gpu-suite.log").exists()  # nothing ran


def test_phase_limits_fit_one_device_call():
    """The default run (tests, ops, model) fits one call; `train` is a second call of its own."""
    limits = {k: int(v) for k, v in re.findall(r"([A-Z]+_S)=\$\{\1:-(\d+)\}", SUITE.read_text())}
    assert set(limits) == {"TESTS_S", "OPS_S", "MODEL_S", "TRAIN_S"}
    assert limits["TESTS_S"] + limits["OPS_S"] + limits["MODEL_S"] <= DEVICE_CALL_S - 60
    assert limits["TRAIN_S"] <= DEVICE_CALL_S - 60
    assert re.search(r"PHASES=\$\{\*:-tests ops model\}", SUITE.read_text())
