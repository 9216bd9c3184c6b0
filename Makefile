# Set-up is part of every target: the first run creates .venv (and .venv-user for the tests), later runs reuse it.
# GPU users: create .venv with your CUDA build of torch 2.13.0 first (see README); it is kept.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# A user's install (pip install monai-sr[federated,zoo]: no test or MONAI Label packages): the tests run the
# user's commands (monai-sr, monai.bundle, torchrun, NVFlare) in it, so an undeclared dependency fails a test.
# It also starts them faster: MONAI imports every optional package it finds (MONAI Label's mlflow,
# matplotlib, scikit-learn, pandas, itk ...); `import monai` takes 5-8 CPU-s there against 9-15 in .venv here.
USER_VENV ?= .venv-user
USER_PY := $(USER_VENV)/bin/python
USER_STAMP := $(USER_VENV)/.installed
# pip says nothing for 45 s while it unpacks MONAI's dependencies: a line every 10 s of silence says it works
HEARTBEAT := $(PYTHON) tools/heartbeat.py

.PHONY: demo test test-fast benchmark clean system-tools

# Debian tools the tests drive (dciodvfy validates DICOM output; Orthanc is the PACS of the round trip;
# Chromium renders the HTML report): installed with apt when missing and run as root (CI); otherwise say
# loudly what to install.
DEBIAN_TOOLS := dicom3tools orthanc orthanc-dicomweb chromium
system-tools:
	@if command -v dciodvfy >/dev/null && { command -v Orthanc || test -x /usr/sbin/Orthanc; } >/dev/null \
		&& test -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so && command -v chromium >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		$(HEARTBEAT) "installing $(DEBIAN_TOOLS) with apt" -- sh -c "apt-get update -qq && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(DEBIAN_TOOLS) >/dev/null" || echo "*** apt could not install $(DEBIAN_TOOLS); the DICOM, PACS and report tests will fail ***"; \
	else echo "*** missing Debian packages $(DEBIAN_TOOLS): install them (sudo apt-get install $(DEBIAN_TOOLS)); the DICOM, PACS and report tests fail without them ***"; fi

$(STAMP): EXTRAS := test
$(USER_STAMP): EXTRAS := federated,zoo
$(STAMP) $(USER_STAMP): pyproject.toml constraints.txt
	test -x $(@D)/bin/python || $(PYTHON) -m venv $(@D)
	$(HEARTBEAT) "updating pip in $(@D)" -- $(@D)/bin/python -m pip install -q --upgrade pip
	$(@D)/bin/python -c "import torch" 2>/dev/null || \
		$(HEARTBEAT) "installing PyTorch into $(@D)" -- $(@D)/bin/python -m pip install -q torch==2.13.0
	$(HEARTBEAT) "installing monai-sr[$(EXTRAS)] and MONAI into $(@D) (1-2 min)" -- \
		$(@D)/bin/python -m pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	touch $@

demo: $(STAMP)
	$(PY) -m monai_sr_bundle.cli demo --output out/demo

test: $(STAMP) $(USER_STAMP) system-tools
	$(PY) -m ruff check .
	MONAI_SR_USER_PYTHON=$(abspath $(USER_PY)) $(PY) -m pytest -q -n 2 --dist loadgroup --durations=30

# the fast tier for each edit: no slow, server or federated tests (markers: tests/conftest.py), on both cores
test-fast: $(STAMP) $(USER_STAMP)
	$(PY) -m ruff check .
	MONAI_SR_USER_PYTHON=$(abspath $(USER_PY)) $(PY) -m pytest -q -n 2 --dist loadgroup --durations=10 -m "not (slow or server or federated)"

benchmark: $(STAMP)
	$(PY) -m benchmarks.quality
	$(PY) -m benchmarks.speed

clean:
	rm -rf out .pytest_cache
