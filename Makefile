# pianoeval: the two set-up commands are `make demo` and `make test`.
# Both create .venv if missing and install what they need; a second run with nothing changed is quick.

PYTHON_SYS ?= $(shell command -v python3.11 || command -v python3)
VENV       := .venv
PY         := $(VENV)/bin/python
PIP        := $(PY) -m pip --disable-pip-version-check
STAMP      := $(VENV)/.pianoeval-installed
SYS_STAMP  := $(VENV)/.pianoeval-system
DEMO_OUT   ?= demo_out
PYTEST_ARGS ?=

.PHONY: install system browser demo test test-fast bench clean help

help:
	@echo "make demo   - generate a demo corpus and run the whole pipeline on local Ray (outputs in $(DEMO_OUT)/)"
	@echo "make test   - run the test suite (unit + slow end-to-end tests)"
	@echo "make test-fast - unit tests only (skips tests marked slow)"
	@echo "make bench  - run benchmarks and rewrite benchmarks/RESULTS.md"

$(PY):
	$(PYTHON_SYS) -m venv $(VENV)

# System packages: FluidSynth and two piano soundfonts (render the demo corpus), LAME/ffmpeg (MP3).
$(SYS_STAMP): .ci/system-deps.sh | $(PY)
	@bash .ci/system-deps.sh
	@touch $@

$(STAMP): pyproject.toml $(SYS_STAMP) | $(PY)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"
	# basic-pitch's metadata pulls TensorFlow; we run its bundled ONNX model, so skip its declared deps.
	$(PIP) install -q --no-deps "basic-pitch==0.4.0"
	$(PY) .ci/fix_environment.py --fix
	@touch $@

# Headless Chromium (Debian package `chromium`): tests/jobs/test_report_browser.py opens the HTML report of a
# scoring run in a real browser. Installed when running as root; otherwise a warning says what to install
# (the test is then skipped, except in CI, where it fails).
browser:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing system package: chromium"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "warning: the report's browser test needs chromium: sudo apt-get install -y chromium" >&2; \
	  fi; \
	fi

install: $(STAMP)

demo: install
	$(PY) jobs/demo.py --out $(DEMO_OUT)

# The unit tests run in two processes (pytest-xdist), then the slow end-to-end tests one at a time: each of
# those keeps both cores busy with its own Ray jobs, so running them side by side gains nothing. PYTEST_ARGS
# go to both runs; a selection that leaves one of them nothing to run (pytest's exit 5) is not a failure.
test: install browser
	$(PY) -m pytest -q -ra -m "not slow" -n 2 $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(PY) -m pytest -q -ra -m slow --durations=25 $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-fast: install browser
	$(PY) -m pytest -q -ra -m "not slow" -n 2 $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
