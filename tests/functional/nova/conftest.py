"""pytest collection of the Nova harness tests (see ``__init__.py``).

Where nova is not installed, e.g. in ``tox -e functional``, these tests are
not collected.
"""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec("nova") is None:
    collect_ignore_glob = ["test_*.py"]
