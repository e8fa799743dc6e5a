# The two commands a new user runs (see README.md):
#   make run    set up .venv, train a small GPT on the built-in corpus for a few minutes, print a sample
#   make test   set up .venv with the test extras and run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed first, pinned, so pip never resolves the bare `torch` requirement to a
# multi-GB CUDA build. Elsewhere, add e.g. TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu".
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
RUN_DIR ?= runs/main

.PHONY: run test bench lint setup setup-dev browser clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.torch: $(BIN)/python
	$(BIN)/pip install -q $(TORCH_INDEX) "$(TORCH_SPEC)"
	touch $@

setup: $(VENV)/.torch
	$(BIN)/pip install -q -e .

setup-dev: $(VENV)/.torch
	$(BIN)/pip install -q -e ".[dev]"

run: setup
	$(BIN)/gptsmith download gpt2-bpe
	$(BIN)/gptsmith train --out $(RUN_DIR) --overwrite
	$(BIN)/gptsmith generate --checkpoint $(RUN_DIR) --max-new-tokens 60 --temperature 0.8 --top-k 40 --seed 1 "The module"

test: setup-dev browser
	$(BIN)/python -m pytest -q

# The playground's browser test drives Debian's chromium + chromedriver (never a downloaded browser).
# Installed here when missing and possible (root with apt-get); otherwise that test skips and says why.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; } || \
	echo "note: chromium/chromedriver not installed; the playground browser test will skip"

bench: setup-dev
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/pip install -q --no-deps llms-from-scratch
	@echo "run one with: $(BIN)/python -m benchmarks NAME   (list: $(BIN)/python -m benchmarks --list)"

lint: setup-dev
	$(BIN)/ruff check gptsmith tests benchmarks

clean:
	rm -rf $(VENV) build dist *.egg-info
