# Developer entry points. CI runs .ci/run, which installs the system packages and ends in `make test`.

PYTHON ?= python3
VENV := .venv
# Newer than pyproject.toml once `pip install -e .[dev]` has succeeded for its current content.
STAMP := $(VENV)/.installed

.PHONY: venv test lint demo

venv: $(STAMP)

$(STAMP): pyproject.toml
	scripts/system-deps
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet -e '.[dev]'
	touch $@

# pytest exits 5 when it collects no tests; make passes any non-zero exit on as a failure.
test: venv
	$(VENV)/bin/pytest -q

lint: venv
	$(VENV)/bin/ruff check . && $(VENV)/bin/mypy

demo: venv
	$(VENV)/bin/silobreak demo
