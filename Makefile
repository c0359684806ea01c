# Two entry points for a fresh machine with Python 3.11:
#   make demo   set up .venv, then export a generated project on a local SeaweedFS
#   make test   set up .venv, then run the test suite (it starts its own servers)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
READY := $(VENV)/.installed

.PHONY: demo test bench setup clean

setup: $(READY)

$(READY): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit("rbexport needs Python 3.11 or newer" if sys.version_info < (3, 11) else 0)'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test,dask]"
	touch $(READY)

demo: $(READY)
	$(BIN)/rbexport demo --output demo-output

test: $(READY)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) demo-output .pytest_cache

bench: $(READY)
	$(BIN)/python -m benchmarks
