"""glibc allocator limits for the agent process.

Why: glibc gives each thread that allocates its own malloc arena (up to
8 per core).  An agent runs a few threads per migration (stream, relays,
plan, returns), each passing frames of tens to hundreds of KiB; a freed
frame stays resident in its thread's arena.  Measured on the libvirt lab
(``tools/agent_memory_scenario.py``, 384 MiB guest): a redirect's new
destination grew by 8.1 MiB with the default, 7.0 MiB with two arenas
(old destination 6.5 -> 4.3 MiB), i.e. above and below the 2% of guest
RAM an agent may add.  The CPU cost is nil here: the threads spend their
time in socket calls and the native codec, not in malloc.
"""

from __future__ import annotations

import ctypes
import ctypes.util

from oslo_log import log as logging

LOG = logging.getLogger(__name__)

#: mallopt() parameter number of M_ARENA_MAX (glibc malloc.h).
M_ARENA_MAX = -8


def limit_arenas(count: int) -> bool:
    """Cap glibc's malloc arenas at ``count`` (0: leave glibc's default).

    Call before the process starts its threads.  Returns whether the
    limit is in force (False on a libc without mallopt, e.g. musl).
    """
    if count <= 0:
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        LOG.info("malloc arenas not limited: no glibc mallopt")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if mallopt(M_ARENA_MAX, count) != 1:
        LOG.warning("mallopt(M_ARENA_MAX, %(n)d) failed", {"n": count})
        return False
    return True
