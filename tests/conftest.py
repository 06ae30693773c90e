"""Shared test setup.

Without CUDA, the Triton kernels run in Triton's interpreter on CPU tensors: TRITON_INTERPRET
must be set before any kernel is defined, hence here, before `ipa` is imported by a test module.
"""

import os
from pathlib import Path

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


def pytest_collection_modifyitems(config, items):
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
