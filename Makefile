# rsclip: two commands do everything on a fresh machine.
#   make demo   set up the light (torch-free) inference install and map the bundled sample raster
#   make test   set up everything (training + export + QGIS) and run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
DEMO_VENV ?= .venv-demo
PIP_FLAGS ?= -q
OUT ?= out

.PHONY: demo setup setup-dev test test-fast test-slow test-qgis check-wheel bench plugin-zip lint clean

$(DEMO_VENV)/.done: pyproject.toml
	$(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/pip install $(PIP_FLAGS) -U pip
	$(DEMO_VENV)/bin/pip install $(PIP_FLAGS) -e .
	touch $@

$(VENV)/.done: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_FLAGS) -U pip
	# torch first, pinned, so no other resolver step can pull a different build
	$(VENV)/bin/pip install $(PIP_FLAGS) torch==2.14.1 torchvision==0.29.1
	$(VENV)/bin/pip install $(PIP_FLAGS) -e '.[train,export,eval,test]' ruff mypy==2.4.1
	touch $@

setup: $(DEMO_VENV)/.done
setup-dev: $(VENV)/.done

demo: setup
	bash scripts/demo.sh $(DEMO_VENV) $(OUT)

# The README's test command. QGIS tests run in Debian's python3 (QGIS 3.22, numpy 1.24, no torch).
test: setup-dev
	$(VENV)/bin/python -m pytest
	bash scripts/setup_qgis.sh
	VENV_PY=$(VENV)/bin/python bash scripts/test_qgis.sh

# QGIS plugin tests alone (real QGIS 3.22, Debian's python3)
test-qgis: setup-dev
	bash scripts/setup_qgis.sh
	VENV_PY=$(VENV)/bin/python bash scripts/test_qgis.sh

test-fast: setup-dev
	$(VENV)/bin/python -m pytest -x -q

test-slow: setup-dev
	$(VENV)/bin/python -m pytest -m slow

bench: setup-dev
	$(VENV)/bin/python benchmarks/encoders.py
	$(VENV)/bin/python benchmarks/mapping.py

plugin-zip:
	bash scripts/build_plugin_zip.sh

# the wheel alone: < 60 MB, installed into a fresh venv outside the repo, rsclip-map info + classify
# of the bundled sample with no -m (resources must come from the installed package)
check-wheel:
	PYTHON=$(PYTHON) bash scripts/check_wheel.sh

lint: setup-dev
	$(VENV)/bin/ruff check rsclip_core qgis_plugin tests training benchmarks
	$(VENV)/bin/mypy rsclip_core

clean:
	rm -rf $(OUT) build dist *.egg-info .pytest_cache .mypy_cache
