"""Tests that run inside Nova's own in-process functional harness.

They need nova 34.0.0 and its test dependencies (``tox -e nova-functional``).
Importing this package first lets Nova choose its concurrency mode, before
anything imports eventlet or the oslo.service backend, the way Nova's own
``nova/tests/functional/__init__.py`` does; so the tests work under pytest,
stestr and ``python -m testtools.run`` alike. The mode follows
``OS_NOVA_DISABLE_EVENTLET_PATCHING``: native threading unless it says
otherwise.
"""

import importlib.util
import os

if importlib.util.find_spec("nova") is not None:
    os.environ.setdefault("OS_NOVA_DISABLE_EVENTLET_PATCHING", "True")
    # Runs nova.monkey_patch.patch() exactly once per process.
    import nova.tests.functional  # noqa: F401
