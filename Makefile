# Set-up and everyday commands. `make train` and `make test` create the venv on first use.
#   CPU (default):  make test
#   CUDA:           make venv TORCH_SPEC=torch==2.13.0 TORCH_INDEX=https://download.pytorch.org/whl/cu128
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv train test test-fast lint format
venv: $(STAMP)

# torch only where the venv has none: the reinstall after a pyproject.toml change keeps the build chosen before.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || \
		$(BIN)/pip install "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -e ".[dev]"
	touch $@

train: $(STAMP)
	$(BIN)/python -m src.train $(ARGS)

# The full suite, as CI runs it, with the 30 slowest tests listed at the end. One pytest worker
# per core (at most 4), each test file on one worker; tests/conftest.py splits the cores' threads.
TEST_WORKERS ?= auto
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --maxprocesses 4 --dist loadfile --durations=30 $(ARGS)

# Everything but the tests marked slow (long end-to-end runs, the wheel install): a check while editing.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --maxprocesses 4 --dist loadfile -m "not slow" $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .
