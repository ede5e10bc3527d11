# kdlab: `make run` and `make test` each set up .venv first, on a fresh clone.
# GPU users: make setup TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
EXPERIMENT ?= distill_mlp
ARGS ?=

.PHONY: setup run test test-unit test-fast bench results format lint clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

# Torch goes in first, so the package's `torch>=2.4` is already met and pip never fetches a CUDA build.
$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev,all]'  # every extra: sweeps, plots, deploy, digits, trackers (mlflow, wandb)
	touch $@

setup: $(VENV)/.installed

run: setup
	$(BIN)/python train.py experiment=$(EXPERIMENT) $(ARGS)

test: setup
	$(BIN)/python -m pytest -q

test-unit: setup
	$(BIN)/python -m pytest -q -m "unit and not heavy"

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not e2e"

# ~10 min on 2 CPU cores: every row x 3 interleaved repeats, batch 128 and 512, bf16/compile/fused at 128 and 1024.
bench: setup
	$(BIN)/python scripts/benchmark.py --json outputs/bench.json $(ARGS)

# Every sweep behind the README's results tables (continued where stopped, cached teachers reused), then the
# tables: outputs/results/RESULTS.md, and the README's blocks with ARGS="--readme".
results: setup
	$(BIN)/python scripts/results.py $(ARGS)

format: setup
	$(BIN)/ruff format src tests scripts train.py
	$(BIN)/ruff check --fix src tests scripts train.py

lint: setup
	$(BIN)/ruff format --check src tests scripts train.py
	$(BIN)/ruff check src tests scripts train.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
