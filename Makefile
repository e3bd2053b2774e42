# softlab: `make lab` sets everything up and opens the notebooks in JupyterLab; `make test` sets up and runs the
# tests; `make demo` sets up and runs the main job headless. All are idempotent: a second run only re-installs
# when pyproject.toml changed.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch build that lies on this project's machines; override for another platform (e.g. TORCH_PINS=torch).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
ALLOW_ROOT := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)
# What `make lab` opens: the first notebook of the series (the folder until that notebook exists).
LAB_OPEN := $(firstword $(wildcard notebooks/00_quickstart.ipynb) notebooks)

.PHONY: setup lab demo test data browser clean

setup: data browser $(VENV)/.installed

data: $(FASHION_MNIST)

$(FASHION_MNIST):
	$(SUDO) apt-get update -qq
	$(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist

# Debian's Chromium, for the real-browser notebook tests (tests/test_browser.py). Optional: where it cannot be
# installed, set-up goes on and those tests are skipped, saying why.
browser: $(CHROMIUM)

$(CHROMIUM):
	-$(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
		|| echo "note: chromium could not be installed; the browser tests will be skipped"

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[dev,widgets,teachers]'
	touch $@

# JupyterLab on 127.0.0.1 with token authentication (the URL it prints carries the token); notebooks run on the
# project's environment (the kernel is started with $(PY)).
lab: setup
	$(VENV)/bin/jupyter lab --ServerApp.ip=127.0.0.1 $(ALLOW_ROOT) $(LAB_OPEN)

demo: setup
	$(VENV)/bin/softlab demo

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache runs notebooks/runs
