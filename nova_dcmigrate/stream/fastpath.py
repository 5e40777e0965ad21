"""Native or pure-Python per-page work: which one, chosen once.

Why: the agents' per-page work (parsing RAM records, digests, the page
store, the source's filter) costs a Python call per page, which caps an
agent far below a 10 Gbit/s link.  ``_speedups`` (a C extension built with
the wheel) does it a run of records at a time.  It is optional: when it
was not built (no compiler or headers) or ``DCMIGRATE_NO_NATIVE=1`` is
set, :data:`native` is None and every caller uses its pure-Python code,
which gives the same results (the unit and property tests run both).

Each native function consumes a run of ``PAGE|CONTINUE`` /
``ZERO|CONTINUE`` records from the stream reader's buffer and stops before
any other record, which the reader then parses in Python as usual
(see :meth:`StreamReader._parse_records`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from types import ModuleType

from oslo_log import log as logging

LOG = logging.getLogger(__name__)

#: Set to "1" to force the pure-Python code.
ENV_DISABLE = "DCMIGRATE_NO_NATIVE"


def _load() -> tuple[ModuleType | None, str]:
    if os.environ.get(ENV_DISABLE, "") not in ("", "0"):
        return None, "disabled by %s" % ENV_DISABLE
    try:
        from nova_dcmigrate.stream import _speedups  # type: ignore
    except ImportError as err:
        return None, "not built (%s)" % err
    return _speedups, "native"


#: The ``_speedups`` module, or None for the pure-Python code.
native: ModuleType | None
#: Why :data:`native` is what it is (for logs and benchmarks).
reason: str
native, reason = _load()
_available = native
if native is None:
    # Also logged when an agent starts (logging may not be set up yet).
    LOG.info("per-page code: pure Python (%s)", reason)


def enabled() -> bool:
    return native is not None


def available() -> bool:
    """Whether the extension was built and can be imported."""
    return _available is not None


@contextlib.contextmanager
def forced(use_native: bool) -> Iterator[None]:
    """Use (or not) the native code for objects made inside the block.

    For tests and benchmarks; visitors bind the choice when they are made.
    :raises RuntimeError: native code asked for but not built.
    """
    global native
    if use_native and _available is None:
        raise RuntimeError("nova_dcmigrate.stream._speedups is not built: "
                           "%s" % reason)
    old = native
    native = _available if use_native else None
    try:
        yield
    finally:
        native = old


def set_native(use_native: bool) -> None:
    """Like :func:`forced`, for a whole process (benchmark children)."""
    global native
    if use_native and _available is None:
        raise RuntimeError("nova_dcmigrate.stream._speedups is not built")
    native = _available if use_native else None
