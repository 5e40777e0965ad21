# The two entry points of nova-dcmigrate (see README.rst):
#   make demo   run the main job on a local lab
#   make test   install everything needed and run the whole test suite
# Both install what they need (Debian packages, virtualenvs, the lab guest
# image) idempotently; they must run as root (network namespaces, QEMU).

SHELL := /bin/bash
TOX_VENV := .venv-tox
TOX := $(TOX_VENV)/bin/tox
PYTHON ?= python3

.PHONY: demo test system-deps guest-image tox unit functional bench clean

demo: system-deps tox guest-image
	$(TOX) -e functional --notest -q
	.tox/functional/bin/dcmigrate-bench --json demo.json --plot demo.png $(DEMO_ARGS)

# nova-functional: Nova's in-process harness with our driver (nova 34.0.0
# from PyPI, installed by tox; no network while the tests run).
test: system-deps tox guest-image
	$(TOX) -e py3,functional,nova-functional -- $(TEST_ARGS)

system-deps:
	bash tools/install-system-deps.sh

$(TOX):
	$(PYTHON) -m venv $(TOX_VENV)
	$(TOX_VENV)/bin/pip install -q 'tox>=4.0,<5'

tox: $(TOX)

guest-image: system-deps tox
	$(TOX) -e functional --notest -q
	.tox/functional/bin/dcmigrate-lab build-image

unit: tox
	$(TOX) -e py3

functional: system-deps tox guest-image
	$(TOX) -e functional

bench: system-deps tox guest-image
	$(TOX) -e bench -- $(BENCH_ARGS)

clean:
	rm -rf .tox $(TOX_VENV) .venv build *.egg-info
