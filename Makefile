# Every target sets itself up on a fresh machine: a venv, the dependencies,
# and a CPU build of torch unless a GPU (nvidia-smi) is present.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH_CPU ?= torch==2.13.0

.PHONY: demo test lint typecheck bench clean venv browser

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	    echo "GPU found: installing the default (CUDA) torch"; \
	    $(BIN)/python -m pip install -q "torch>=2.13.0"; \
	else \
	    echo "no GPU: installing the CPU torch ($(TORCH_CPU))"; \
	    $(BIN)/python -m pip install -q "$(TORCH_CPU)"; \
	fi
	@$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m node.cli demo

# Headless Chromium for the /ui tests, installed when missing (root + apt);
# without it those tests skip and say why.
browser:
	@.ci/install-browser

test: $(STAMP) browser
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/crdt_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
