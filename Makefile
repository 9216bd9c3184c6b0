# Set-up is part of every target: the first run creates .venv, later runs reuse it.
# GPU users: create .venv with your CUDA build of torch 2.13.0 first (see README); it is kept.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test benchmark clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m monai_sr_bundle.cli demo --output out/demo

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

benchmark: $(STAMP)
	$(PY) benchmarks/quality.py
	$(PY) benchmarks/speed.py

clean:
	rm -rf out .pytest_cache
