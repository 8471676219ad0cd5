# qkdtwin — set-up and run. `make demo` and `make test` install what is missing first
# (Debian packages, virtual environment, Python packages, Ansible collections); a second
# run skips what is already there.

SHELL        := /bin/bash
PYTHON       ?= python3
VENV         ?= .venv
BIN          := $(VENV)/bin
STAMPS       := .make
LAB          ?= labs/star6.clab.yml
PYTEST_ARGS  ?=

# Debian packages: the broker, the tools the netns runtime drives, and the browser the
# dashboard test drives (never a browser download of a test tool). Docker and debootstrap,
# needed only by `make images` and its tests, are installed on demand by scripts/docker-up.sh.
APT_PACKAGES := mosquitto mosquitto-clients nftables iproute2 iputils-ping procps psmisc \
                openssl ca-certificates curl chromium chromium-driver strace

.PHONY: install apt venv collections test unit lint demo down clean help images

help:
	@echo "make demo    install, deploy $(LAB), run the paper's experiment, draw its timeline"
	@echo "make test    install, run the whole test suite (needs root)"
	@echo "make lint    ruff + ansible-lint"
	@echo "make down    tear the demo lab down"
	@echo "make images  build the clab runtime's images qkdtwin/node and qkdtwin/broker"

install: apt venv collections

apt:
	@scripts/install-apt.sh $(APT_PACKAGES)

venv: $(STAMPS)/venv

$(STAMPS)/venv: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ needed"'
	@test -x $(BIN)/python || { echo "venv: creating $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo "venv: installing qkdtwin and its dependencies"
	@$(BIN)/pip install -q --upgrade pip
	@$(BIN)/pip install -q -e '.[dev]'
	@mkdir -p $(STAMPS) && touch $@

# Collections come with the `ansible` PyPI package (Galaxy is not reachable from lab hosts
# we target); this only checks that the ones the roles use are there.
collections: venv
	@$(BIN)/python -c 'import ansible_collections.community.crypto, ansible_collections.community.docker' \
	  && echo "ansible: community.crypto and community.docker present"

test: install
	$(BIN)/pytest $(PYTEST_ARGS)

unit: install
	$(BIN)/pytest -m unit $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check src tests benchmarks plugins
	$(BIN)/ansible-lint --profile production playbooks roles

# Images of the clab runtime (docs/runtimes.md): starts a Docker engine when needed, makes a
# local Debian base with debootstrap unless QKDTWIN_BASE names one, builds from a wheelhouse.
images: venv
	@scripts/build-images.sh

demo: install
	$(BIN)/qkdtwin demo $(LAB)

down:
	$(BIN)/qkdtwin down $(LAB)

clean:
	rm -rf $(STAMPS) $(VENV) build src/*.egg-info
