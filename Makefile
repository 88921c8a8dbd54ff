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

.PHONY: install system demo test test-fast bench clean help

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

install: $(STAMP)

demo: install
	$(PY) jobs/demo.py --out $(DEMO_OUT)

test: install
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -q -ra -m "not slow" $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
