# The README's commands. `make install` is quick when nothing changed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch: reuse one the base interpreter already has (the venv sees system site-packages),
# else install this pin (on this workplace's machines it is a CPU build kept on disk).
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.ipa-installed

.PHONY: install venv test test-fast demo bench gpu-wheels clean

install: $(STAMP)
	@sh scripts/ensure_chromium.sh
	@$(PY) -c "import ipa.hands as h; h.resolve_model_path()" 2>/dev/null || $(PY) -m ipa.cli hands model \
	  || echo "make install: could not build the MediaPipe hand bundle (needs PyPI once); hand-detection tests will skip (and fail on CI)" >&2

$(STAMP): setup.py pyproject.toml Makefile $(wildcard csrc/*.cpp csrc/*.h csrc/*.inc)
	@test -x $(PY) || $(MAKE) --no-print-directory venv
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q --upgrade "setuptools>=69" wheel "pybind11>=2.12"
	IPA_BUILD_NATIVE=1 $(PIP) install -q --no-build-isolation -e ".[test]"
	@$(PY) -c "import ipa._C, ipa.ops; print('ipa installed:', ipa.ops.available_backends())"
	@touch $(STAMP)

# A new venv sees the base interpreter's packages; when $(PYTHON) is itself a venv that already has
# torch (GPU images ship one), a .pth file makes that env's packages visible too, so its CUDA torch
# is reused instead of installing another.
venv:
	$(PYTHON) -m venv --system-site-packages $(VENV)
	@if $(PYTHON) -c "import torch" 2>/dev/null; then \
	  $(PYTHON) -c "import site; print('\n'.join(site.getsitepackages()))" \
	    > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/ipa-parent-env.pth"; \
	  echo "reusing torch from $(PYTHON)"; fi

# Two pytest-xdist workers, each taking whole modules (module fixtures built once), the
# multi-process modules first (tests/conftest.py); the 15 slowest tests are listed at the end.
# TEST_WORKERS=0 runs in this process.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder

test: install
	$(PYTEST) --durations=15

test-fast: install
	$(PYTEST) -m "not slow and not multiprocess"

demo: install
	$(PY) -m ipa.cli demo --out demo_out

bench: install
	$(PY) -m ipa.cli bench ops

# Wheels the lent GPU machine lacks (it reaches no registry), for benchmarks/gpu_suite.sh there.
gpu-wheels: install
	bash scripts/gpu_wheels.sh

clean:
	rm -rf build *.egg-info ipa/_C*.so
