"""Shared test setup.

Without CUDA, the Triton kernels run in Triton's interpreter on CPU tensors: TRITON_INTERPRET
must be set before any kernel is defined, hence here, before `ipa` is imported by a test module.
"""

import os
from pathlib import Path

# Under pytest-xdist (`make test` runs 2 workers) each worker and every process it starts gets its
# share of the cores: OpenMP threads that outnumber the cores spin against each other.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1 and "OMP_NUM_THREADS" not in os.environ:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.environ["OMP_NUM_THREADS"] = str(max(1, _cores // _WORKERS))

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("IPA_SHARED_DIR", REPO.parent / "shared"))


def skip_unless_ci(reason: str):
    """Skip, saying why; on CI (`CI` set) fail instead: `make test`'s install step provides what
    these tests need there, so a skip would hide a broken install."""
    if os.environ.get("CI"):
        pytest.fail(f"CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_dir():
    """../shared beside the checkout (override with IPA_SHARED_DIR); skip clearly if absent."""
    if not SHARED.is_dir():
        pytest.skip(f"shared data folder {SHARED} is absent (set IPA_SHARED_DIR to its path)")
    return SHARED


def _long_first(items):
    """Modules with multi-process tests first, then slow ones, each module kept whole (its fixtures
    are built once). Under `make test`'s two xdist workers the long chains start at once instead of
    running alone at the end while the other worker idles."""
    def weight(item):
        return 0 if "multiprocess" in item.keywords else 1 if "slow" in item.keywords else 2

    module_weight, module_index = {}, {}
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        module_weight[module] = min(module_weight.get(module, 2), weight(item))
        module_index.setdefault(module, len(module_index))
    items.sort(key=lambda it: (module_weight[m := it.nodeid.split("::", 1)[0]], module_index[m]))


def pytest_collection_modifyitems(config, items):
    _long_first(items)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def hand_model():
    """Path of the MediaPipe hand bundle, built once (as `ipa hands model` does) if missing."""
    from ipa.hands import build_model_bundle, resolve_model_path

    try:
        return resolve_model_path()
    except FileNotFoundError:
        pass
    try:
        return build_model_bundle()
    except RuntimeError as e:  # no registry access: the one thing that can stop the build
        skip_unless_ci(f"cannot build the hand model bundle here (`make install` builds it): {e}")
