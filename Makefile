# memsv: set-up, tests and the demo. Everything a fresh machine needs is installed from here.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# pip byte-compiles every file it installs on one core; compileall does the same on every core (files
# that do not compile for this Python, such as torch's py312 test helpers, are skipped as pip skips them).
# The tests need it (the whole venv, in processes that may not write byte-code); the demo does not
# (see demo below).
PIP := $(PY) -m pip install -qq --no-compile
COMPILE := $(PY) -m compileall -q -j 0 $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') >/dev/null || true
# CPU torch by default (the local wheel satisfies this pin); override for CUDA, e.g.
#   make install TORCH_SPEC="torch==2.5.1" TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu121"
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
APT_PACKAGES := ffmpeg sox

.PHONY: install system-deps test lint format demo clean

# The core (torch + memsv) is all the demo needs; the full install adds the test, export and VAD extras.
$(VENV)/.core: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(PIP) -e .
	touch $@

$(VENV)/.installed: $(VENV)/.core
	$(PIP) -e ".[dev,export,vad]"
	$(COMPILE)
	touch $@

install: system-deps $(VENV)/.installed

# ffmpeg (VoxCeleb2 m4a) and sox: installed only when missing and when we may (root or sudo).
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO=sudo; else SUDO=none; fi; \
	  if [ "$$SUDO" != none ] && $$SUDO apt-get update -qq && \
	     $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; then :; \
	  else echo "warning: could not install$$missing (m4a input and sox pipes need them; their tests skip)"; fi; \
	fi

# one pytest worker per core (pytest-xdist), each test file on one worker: module fixtures (the recipe
# run, trained models) are built once, and the heavy files start first (tests/conftest.py)
TEST_JOBS ?= auto
test: install
	$(PY) -m pytest -q -n $(TEST_JOBS) --dist loadfile

lint: install
	$(VENV)/bin/ruff check memsv_cli tests benchmarks
	$(VENV)/bin/ruff format --check memsv_cli tests benchmarks

format: install
	$(VENV)/bin/ruff format memsv_cli tests benchmarks
	$(VENV)/bin/ruff check --fix memsv_cli tests benchmarks

# The mini corpus needs neither the extras nor ffmpeg / sox. Byte-code: the recipe's memsv commands
# compile what they import as they first import it (3,170 of the venv's ~9,400 files, ~14 s spread
# over the stages, against ~23 s for compileall of everything) and later commands read it back; so the
# demo lets Python write byte-code even where the environment says not to (PYTHONDONTWRITEBYTECODE,
# as on our CI machines, would otherwise recompile torch at each of the recipe's 13 memsv starts).
demo: $(VENV)/.core
	cd recipes/voxceleb && PATH="$(CURDIR)/$(VENV)/bin:$$PATH" env -u PYTHONDONTWRITEBYTECODE ./run.sh --data mini

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
