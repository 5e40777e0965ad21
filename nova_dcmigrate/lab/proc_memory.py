"""Memory of a process as the kernel accounts it, for the lab and bench.

Why: the agents must not hold a second copy of guest RAM; this reads what
an agent really costs.  ``rss``/``peak_rss`` come from
``/proc/<pid>/status`` (``VmRSS``/``VmHWM``; the peak is reset with
``clear_refs`` = 5 before a measured run), ``pss`` and the shared-memory
parts from ``/proc/<pid>/smaps_rollup``.  RAM an agent holds only through
a file descriptor (a memfd it keeps after QEMU exited) is in no mapping,
so no RSS counts it: the agent reports it itself (``backing_bytes`` in its
store status).
"""

from __future__ import annotations

import dataclasses
from typing import Any

KIB = 1024


@dataclasses.dataclass(frozen=True)
class ProcMemory:
    """Bytes, as the kernel counts them for one process."""

    rss: int            # resident now (anonymous + file + shmem)
    peak_rss: int       # highest rss since start or the last reset
    rss_anon: int
    rss_shmem: int      # resident shared memory (memfd/tmpfs) mapped
    pss: int            # proportional: shared pages split among users
    pss_shmem: int

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def _kib_fields(path: str) -> dict[str, int]:
    out: dict[str, int] = {}
    with open(path) as f:
        for line in f:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if len(parts) == 2 and parts[1] == "kB":
                out[key.strip()] = int(parts[0]) * KIB
    return out


def read(pid: int) -> ProcMemory:
    """:raises OSError: the process is gone."""
    st = _kib_fields("/proc/%d/status" % pid)
    try:
        sm = _kib_fields("/proc/%d/smaps_rollup" % pid)
    except OSError:
        sm = {}
    return ProcMemory(rss=st.get("VmRSS", 0), peak_rss=st.get("VmHWM", 0),
                      rss_anon=st.get("RssAnon", 0),
                      rss_shmem=st.get("RssShmem", 0),
                      pss=sm.get("Pss", 0), pss_shmem=sm.get("Pss_Shmem", 0))


def reset_peak(pid: int) -> None:
    """Restart ``peak_rss`` from the current RSS (Linux >= 4.0)."""
    with open("/proc/%d/clear_refs" % pid, "w") as f:
        f.write("5")


def report(before: ProcMemory, after: ProcMemory,
           held: dict[str, Any] | None = None) -> dict[str, Any]:
    """One agent's entry of the benchmark JSON: the state before the
    run, after it, the peak during it and its growth over ``before``,
    plus the guest RAM it held open and copied (its store status)."""
    held = held or {}
    return {
        "rss_before": before.rss,
        "rss_after": after.rss,
        "peak_rss": after.peak_rss,
        "peak_rss_growth": after.peak_rss - before.rss,
        "pss_after": after.pss,
        "rss_shmem_after": after.rss_shmem,
        "pss_shmem_after": after.pss_shmem,
        "held_backing_bytes": int(held.get("backing_bytes", 0) or 0),
        "copied_bytes": int(held.get("copied_bytes", 0) or 0),
    }
