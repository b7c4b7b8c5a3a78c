# Every target sets itself up on a fresh machine: a venv, the dependencies,
# and a CPU build of torch unless a GPU (nvidia-smi) is present.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH_CPU ?= torch==2.13.0

.PHONY: demo test lint typecheck bench clean venv browser compiled

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

# The protocol core compiled with mypyc (compiled_build.py), rebuilt when a
# source changes. Where it cannot be built (no C compiler, say) it prints why
# and the pure-Python modules run: same code, same bytes, slower.
COMPILED := build/mypyc/gossip/SOURCES.json
$(COMPILED): $(STAMP) setup.py compiled_build.py $(wildcard gossip/*.py) $(wildcard crdt/*.py) \
		sim/network.py
	-@$(BIN)/python setup.py build_mypyc

compiled: $(COMPILED)

demo: $(STAMP) compiled
	$(BIN)/python -m node.cli demo

# Headless Chromium for the /ui tests, installed when missing (root + apt);
# without it those tests skip and say why.
browser:
	@.ci/install-browser

# The whole suite runs against the compiled build (when there is one), then
# the protocol's own tests (gossip, sim, crdt) against the pure-Python modules.
test: $(STAMP) browser compiled
	$(BIN)/ruff check .
	$(BIN)/mypy
	@$(BIN)/python -c "import compiled_build as c, gossip.core as g, crdt.codec as k; \
	    print('gossip core:', 'compiled' if c.is_compiled(g) else 'pure Python'); \
	    print('crdt codec:', 'compiled' if c.is_compiled(k) else 'pure Python')"
	$(BIN)/python -m pytest
	RUMOR_PURE=1 $(BIN)/python -m pytest tests/gossip tests/sim tests/crdt

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/crdt_bench.py

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache .hypothesis
