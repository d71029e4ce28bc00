# Two commands do all set-up on a fresh machine (see README):
#   make run    the main job on embedded defaults (local Ray, local storage, synthetic data)
#   make test   the test suite
# Both create .venv on first use and reinstall when pyproject.toml changes.

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# On a machine without an NVIDIA GPU take the local CPU build of torch (minutes, not a multi-GB download).
TORCH_SPEC := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo 'torch>=2.13' || echo 'torch==2.13.0')

# apt-get needs root: use sudo where we are not root and it exists.
SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo >/dev/null 2>&1 && [ "$$(id -u)" != 0 ] && echo sudo)

export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0
export PYTHONUNBUFFERED ?= 1

.PHONY: run test venv browser clean

# The web editor's browser test drives Debian's Chromium through its matching ChromeDriver.
CHROMIUM_STAMP := $(VENV)/.chromium

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet '$(TORCH_SPEC)'
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(PY) pipelines/run_pipeline.py $(ARGS)

$(CHROMIUM_STAMP): $(STAMP)
	command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }
	touch $(CHROMIUM_STAMP)

browser: $(CHROMIUM_STAMP)

test: $(STAMP) $(CHROMIUM_STAMP)
	$(PY) -m pytest $(ARGS)

clean:
	rm -rf runs .pytest_cache
