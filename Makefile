# Set-up and entry points. `make quickstart` and `make test` are the README's two commands: on a
# fresh machine they create the virtual environment, install the pinned stack, and run.
#
#   STACK=latest      transformers 5.23 / trl 1.16 (default)
#   STACK=distillkit  transformers 4.57 / trl 0.25.1, what arcee-ai DistillKit v1 pins
PYTHON ?= python3
STACK ?= latest
VENV ?= .venv-$(STACK)
PYTEST_ARGS ?=

STAMP := $(VENV)/.installed-$(STACK)

.PHONY: setup quickstart test lint clean

setup: $(STAMP)

# torch is pinned by the constraints file: an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints/$(STACK).txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	PIP_CONSTRAINT=$(CURDIR)/constraints/$(STACK).txt $(VENV)/bin/python -m pip install --quiet -e '.[dev,deepspeed,liger]'
	touch $@

quickstart: setup
	$(VENV)/bin/distillkit-scd quickstart

test: setup
	OMP_NUM_THREADS=1 $(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf .venv-latest .venv-distillkit
