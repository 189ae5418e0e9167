# latentbook — the two commands:  `make book`  (execute every chapter, build the site)  and  `make test`.
# Both set everything up on a fresh machine: the virtual environment, the vendored front-end assets,
# Debian's chromium (browser tests) and Fashion-MNIST files. Nothing is redone when already in place.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# torch is pinned here (not in pyproject.toml, which has lower bounds so that Colab keeps its own torch):
# these releases lie on this machine's disk; any other would be a multi-GB download.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
MODE   ?= full
DEVICE ?= auto
DATASET ?= mnist
SEED   ?= 0
APT_PACKAGES := chromium dataset-fashion-mnist

.PHONY: book test publish env system serve sync check warm cache-info cache-clear clean

book: env system
	$(PY) -m latentbook build --mode $(MODE) --device $(DEVICE) --dataset $(DATASET) --seed $(SEED)

test: env system
	$(PY) -m pytest -q

# The full book, its published models, the Colab edition (committed to the local branch `colab`) and the
# student edition; refuses, naming what to set, while _config.yml's addresses are placeholders.
publish: env system
	$(PY) -m latentbook publish

env: $(VENV)/.installed

# Rebuilt when pyproject.toml changes (a "stale" environment) or when it is missing.
$(VENV)/.installed: pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[book,test]' $(TORCH)
	$(PY) -c "import torch, latentbook, jupyter_book, papermill, playwright; print('environment ready: torch', torch.__version__)"
	@touch $@

# Debian packages, installed only when missing (CI runs as root; elsewhere install them yourself).
system:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	test -d /usr/share/datasets/fashion-mnist || missing="$$missing dataset-fashion-mnist"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi; \
	fi

serve:
	$(PY) -m http.server --directory _build/$(MODE)/html 8000

sync: env
	$(PY) -m latentbook sync

check: env
	$(PY) -m latentbook check

# Instructors, before class: fetch every published model and evaluation (training only what is not
# published), then execute every chapter once, which computes whatever the store still lacks; in class
# each chapter then runs in under a minute. Needs no browser and no Debian package.
warm: env
	$(PY) -m latentbook warm --mode $(MODE) --device $(DEVICE) --dataset $(DATASET) --seed $(SEED)
	$(PY) -m latentbook build --no-site --mode $(MODE) --device $(DEVICE) --dataset $(DATASET) --seed $(SEED)

cache-info: env
	$(PY) -m latentbook cache info

cache-clear: env
	$(PY) -m latentbook cache clear

clean:
	rm -rf _build _executed
