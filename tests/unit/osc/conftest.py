"""Fixtures of the OSC plugin tests."""

from __future__ import annotations

import logging
import os

import pytest
import requests_mock
from osc_lib import clientmanager

# Importing OSC's shell registers the plugin client on ClientManager.
from openstackclient import shell  # noqa: F401


@pytest.fixture
def mock():
    with requests_mock.Mocker() as m:
        yield m


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith('OS_'):
            monkeypatch.delenv(key)
    root = logging.getLogger()
    handlers = list(root.handlers)
    # OSC caches plugin clients on the ClientManager class (one process,
    # one command); every in-process run here must build its own.
    cache = vars(clientmanager.ClientManager)['dcmigrate']
    cache._handle = None
    yield
    cache._handle = None
    # Each in-process shell adds a handler on the test's captured stderr.
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
