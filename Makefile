# Quick start: `make demo` (the demo run, on the tiny local model) and `make test` (the suite).
# Both create .venv on first use and reuse it afterwards; both install the exact versions of
# requirements.lock, so a release upstream cannot change what they run.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LOCK := requirements.lock
# The CPU build of torch where there is no NVIDIA GPU (it lies on these machines); the default
# (CUDA) build where there is one.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.tunebench-installed
PIP_QUIET := 2>&1 | grep -Ev '^(Requirement already satisfied|Looking in|WARNING: Location)' || true
# The newest releases of every dependency, for `make test-latest` and `make lock`.
LATEST := .venv-latest
PYTEST_ARGS ?= -n 2 --dist loadgroup -q

.PHONY: demo test test-fast test-latest lock env clean-env

$(STAMP): pyproject.toml $(LOCK)
	@echo "==> creating virtualenv $(VENV)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "==> installing torch ($(TORCH_SPEC))"
	@$(BIN)/python -m pip install --progress-bar off --disable-pip-version-check -c $(LOCK) "$(TORCH_SPEC)" $(PIP_QUIET)
	@$(BIN)/python -c "import torch" || { echo "torch did not install"; exit 1; }
	@echo "==> installing tunebench and its test tools at the versions of $(LOCK) (pip, a minute the first time)"
	@$(BIN)/python -m pip install --progress-bar off --disable-pip-version-check -c $(LOCK) -e ".[test]" $(PIP_QUIET)
	@$(BIN)/tunebench --help >/dev/null || { echo "install failed"; exit 1; }
	@touch $(STAMP)
	@echo "==> environment ready"

env: $(STAMP)

demo: $(STAMP)
	@$(BIN)/tunebench --workspace demo-workspace demo

test: $(STAMP)
	@echo "==> running the test suite"
	@$(BIN)/python -m pytest $(PYTEST_ARGS)

# The unit tier: no engine process, no training run, no Textual app (under two minutes on two cores).
test-fast: $(STAMP)
	@$(BIN)/python -m pytest $(PYTEST_ARGS) tests/unit

# The suite against the newest release of every dependency (torch stays at TORCH_SPEC), in a fresh
# $(LATEST): run it now and then to learn early that an upstream release breaks us.
test-latest:
	@rm -rf $(LATEST)
	@$(PYTHON) -m venv $(LATEST)
	@$(LATEST)/bin/python -m pip install --progress-bar off --disable-pip-version-check "$(TORCH_SPEC)" $(PIP_QUIET)
	@$(LATEST)/bin/python -m pip install --progress-bar off --disable-pip-version-check -e ".[test]" $(PIP_QUIET)
	@$(LATEST)/bin/python -m pip list --disable-pip-version-check 2>/dev/null | grep -Ei '^(torch|transformers|peft|accelerate|datasets|bitsandbytes|textual|huey) '
	@$(LATEST)/bin/python -m pytest $(PYTEST_ARGS)

# Moves the lock to the newest releases once the whole suite has passed on them.
lock: test-latest
	@{ sed -n '/^#/p' $(LOCK); $(LATEST)/bin/python -m pip freeze --exclude-editable --disable-pip-version-check \
	   | grep -v '^tunebench' | sed -E 's/^(torch==[^+]*)\+.*/\1/'; } > $(LOCK).new
	@mv $(LOCK).new $(LOCK)
	@echo "==> $(LOCK) now holds the versions the suite just passed with; commit it"

clean-env:
	rm -rf $(VENV) $(LATEST)
