"""pytest set-up for the tests that run inside Nova's functional harness.

These tests need nova 34.0.0 and its test dependencies (``tox -e
nova-functional``); elsewhere, e.g. in ``tox -e functional``, they are not
collected. Nova must choose its concurrency mode before anything imports
eventlet or the oslo.service backend, so Nova's own functional test package,
whose import applies that choice, is imported here first. The mode follows
``OS_NOVA_DISABLE_EVENTLET_PATCHING``; native threading unless it says
otherwise.
"""

from __future__ import annotations

import importlib.util
import os

if importlib.util.find_spec("nova") is None:
    collect_ignore_glob = ["test_*.py"]
else:
    os.environ.setdefault("OS_NOVA_DISABLE_EVENTLET_PATCHING", "True")
    # Runs nova.monkey_patch.patch(): threading or eventlet, exactly once.
    import nova.tests.functional  # noqa: F401
