# The two README commands. Everything else lives in the package.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev,plot,progress]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m ols demo

test: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m pytest -q

# the unmarked tier only (under a minute on 2 cores); CI runs `make test`, slow tests included
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/loss_overhead.py

clean:
	rm -rf $(VENV) runs .pytest_cache
