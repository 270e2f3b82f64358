# numpyro_inflow: every target creates .venv (Python >= 3.12, found by tools/find-python.sh)
# and installs the package into it when missing.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.numpyro_inflow-installed
PYTEST_ARGS ?=

.PHONY: help install demo test test-slow bench docs lint format clean

help:
	@echo "make demo       run the end-to-end demo (figures and summary in ./inflow-demo/)"
	@echo "make test       run the test suite (fast; 'make test-slow' for statistical tests)"
	@echo "make bench      run the benchmarks in benchmarks/ (numbers saved to benchmarks/results/)"
	@echo "make docs       build the documentation site strictly into ./site/"
	@echo "make lint       ruff check and format check"

$(PY):
	@py=$$(sh tools/find-python.sh) || exit 1; \
	echo "creating $(VENV) with $$py ($$($$py --version))"; \
	$$py -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	@$(PY) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' || \
	  { echo "$(VENV) holds Python < 3.12; remove it ('rm -rf $(VENV)') and run make again" >&2; exit 1; }
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test,docs]" 2>&1 | grep -v "^WARNING: Location" || true
	@$(PY) -c "import numpyro_inflow" || { echo "installation failed: see the pip output above" >&2; exit 1; }
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m numpyro_inflow.demo --out inflow-demo

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile -m slow $(PYTEST_ARGS)

bench: $(STAMP)
	@set -e; for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b; done

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) site .pytest_cache .ruff_cache inflow-demo
