# softlab: `make demo` sets everything up and runs the main job; `make test` sets up and runs the tests.
# Both are idempotent: a second run only re-installs when pyproject.toml changed.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch build that lies on this project's machines; override for another platform (e.g. TORCH_PINS=torch).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup demo test data clean

setup: data $(VENV)/.installed

data: $(FASHION_MNIST)

$(FASHION_MNIST):
	$(SUDO) apt-get update -qq
	$(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[dev,widgets,teachers]'
	touch $@

demo: setup
	$(VENV)/bin/softlab demo

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache runs
