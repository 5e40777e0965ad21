# The two entry points of nova-dcmigrate (see README.rst):
#   make demo   run the main job on a local lab
#   make test   install everything needed and run the whole test suite
# Both install what they need (Debian packages, virtualenvs, the lab guest
# image) idempotently; they must run as root (network namespaces, QEMU).

SHELL := /bin/bash
TOX_VENV := .venv-tox
TOX := $(TOX_VENV)/bin/tox
PYTHON ?= python3

.PHONY: demo test system-deps guest-image tox unit functional bench clean \
	cloud-venv cloud-up cloud-down tempest

demo: system-deps tox guest-image
	$(TOX) -e functional --notest -q
	.tox/functional/bin/dcmigrate-bench --json demo.json --plot demo.png $(DEMO_ARGS)

# nova-functional: Nova's in-process harness with our driver (nova 34.0.0
# from PyPI, installed by tox; no network while the tests run); then the
# lab cloud with tempest (make tempest, ~11 min).
test: system-deps tox guest-image
	$(TOX) -e py3,functional,nova-functional $(if $(TEST_ARGS),-- $(TEST_ARGS))
	$(MAKE) tempest

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

# The lab cloud (doc/source/lab-cloud.rst): a real OpenStack on the lab,
# nova-dcmigrate installed from a wheel of a clone of this tree through
# the devstack plugin's install function.
CLOUD := .tox/cloud/bin/dcmigrate-lab cloud --repo $(CURDIR)

cloud-venv: system-deps tox guest-image
	$(TOX) -e cloud --notest -q
	bash tools/cloud-install.sh .tox/cloud

# Bring the cloud up in the background (source the printed openrc).
cloud-up: cloud-venv
	$(CLOUD) up

cloud-down:
	$(CLOUD) down

# Up, tempest (Nova's applicable live-migration tests + our plugin), the
# lab's RAM check after a redirect, down: also on failure and Ctrl-C.
tempest: cloud-venv
	$(CLOUD) tempest $(TEMPEST_ARGS)

clean:
	rm -rf .tox $(TOX_VENV) .venv build *.egg-info
