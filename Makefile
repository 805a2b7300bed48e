# Every target creates/uses .venv and installs with torch pinned to the local CPU build (constraints.txt).
PY := .venv/bin/python
PIP := .venv/bin/pip
STAMP := .venv/.installed

.PHONY: install test test-slow lint demo train-demo bench clean

$(STAMP): setup.py constraints.txt
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -x tests

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow tests

lint: $(STAMP)
	.venv/bin/ruff check src tests examples benchmarks
	.venv/bin/ruff format --check src tests examples benchmarks

clean:
	rm -rf .venv build *.egg-info src/*.egg-info
