# Set-up is part of every target: the first run creates .venv, later runs reuse it.
# GPU users: create .venv with your CUDA build of torch 2.13.0 first (see README); it is kept.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast benchmark clean system-tools

# Debian tools the tests drive (dciodvfy validates DICOM output; Orthanc is the PACS of the round trip;
# Chromium renders the HTML report): installed with apt when missing and run as root (CI); otherwise say
# loudly what to install.
DEBIAN_TOOLS := dicom3tools orthanc orthanc-dicomweb chromium
system-tools:
	@if command -v dciodvfy >/dev/null && { command -v Orthanc || test -x /usr/sbin/Orthanc; } >/dev/null \
		&& test -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so && command -v chromium >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			$(DEBIAN_TOOLS) >/dev/null; } || echo "*** apt could not install $(DEBIAN_TOOLS); the DICOM, PACS and report tests will fail ***"; \
	else echo "*** missing Debian packages $(DEBIAN_TOOLS): install them (sudo apt-get install $(DEBIAN_TOOLS)); the DICOM, PACS and report tests fail without them ***"; fi

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m monai_sr_bundle.cli demo --output out/demo

test: $(STAMP) system-tools
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n 2 --dist loadgroup --durations=30

# the fast tier for each edit: no slow, server or federated tests (markers: tests/conftest.py), on both cores
test-fast: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n 2 --dist loadgroup --durations=10 -m "not (slow or server or federated)"

benchmark: $(STAMP)
	$(PY) -m benchmarks.quality
	$(PY) -m benchmarks.speed

clean:
	rm -rf out .pytest_cache
