# Quick start: `make demo` (the demo run, on the tiny local model) and `make test` (the suite).
# Both create .venv on first use and reuse it afterwards.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch where there is no NVIDIA GPU (it lies on these machines); the default
# (CUDA) build where there is one.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.tunebench-installed

.PHONY: demo test env clean-env

$(STAMP): pyproject.toml
	@echo "==> creating virtualenv $(VENV)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "==> installing torch ($(TORCH_SPEC))"
	@$(BIN)/python -m pip install --progress-bar off --disable-pip-version-check "$(TORCH_SPEC)" 2>&1 | grep -Ev '^(Requirement already satisfied|Looking in|WARNING: Location)' || true
	@$(BIN)/python -c "import torch" || { echo "torch did not install"; exit 1; }
	@echo "==> installing tunebench and its test tools (pip, a minute the first time)"
	@$(BIN)/python -m pip install --progress-bar off --disable-pip-version-check -e ".[test]" 2>&1 | grep -Ev '^(Requirement already satisfied|Looking in|WARNING: Location)' || true
	@$(BIN)/tunebench --help >/dev/null || { echo "install failed"; exit 1; }
	@touch $(STAMP)
	@echo "==> environment ready"

env: $(STAMP)

demo: $(STAMP)
	@$(BIN)/tunebench --workspace demo-workspace demo

test: $(STAMP)
	@echo "==> running the test suite"
	@$(BIN)/python -m pytest -n 2 --dist loadgroup -q

clean-env:
	rm -rf $(VENV)
