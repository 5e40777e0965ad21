"""Per-core cost of the agents' per-page work, native and pure Python.

Used by ``tools/bench_agent.py`` (``make bench``).  Why a separate module:
the issue's targets are per core, in CPU-seconds (valid on a loaded
machine, unlike wall time), for both the native code and the pure-Python
fallback (``nova_dcmigrate.stream.fastpath``), and for the source agent
*while it filters a redirected attempt*, which the plain agent pair does
not exercise.

The redirect filter case replays the recorded stream through the source
agent's real :class:`SourceFilter` with a plan in which the new
destination gets the lower ``held`` fraction of the pages from a holder
(expected digests equal to what QEMU sends, so they are dropped) and the
frontier sits at ``frontier`` (held pages below it the source sends
itself; above it they are skipped and kept for a later raise, up to the
default budget).  Measured: parse + digest + filter + re-encode + the
DATA frames' HMAC, in this process's CPU time; socket system calls are
not in it (the agent pair measures those for a plain attempt).
"""

from __future__ import annotations

import contextlib
import os
import time
import types
from typing import Any, Callable, Iterator

from nova_dcmigrate.agent import plan as planmod
from nova_dcmigrate.agent import protocol
from nova_dcmigrate.agent import source as src
from nova_dcmigrate.agent.source_filter import SourceFilter
from nova_dcmigrate.agent.layout import Layout
from nova_dcmigrate.agent.page_store import DIGEST_LEN
from nova_dcmigrate.stream import fastpath
from nova_dcmigrate.stream import StreamReader

MB = 1e6
PATHS = ("native", "python")
TARGET_DST_MB_S = 1250.0
TARGET_FILTER_MB_S = 1000.0
SEED = 0x5EED


def paths() -> list[str]:
    """The paths this build can measure (native only if it was built)."""
    return list(PATHS) if fastpath.available() else ["python"]


@contextlib.contextmanager
def path(name: str) -> Iterator[None]:
    with fastpath.forced(name == "native"):
        yield


def _feed(reader: StreamReader, data: bytes, chunk: int,
          after: Callable[[], None] | None = None) -> None:
    src = memoryview(data)
    pos, total = 0, len(data)
    while pos < total:
        n = min(chunk, total - pos)
        view = reader.get_buffer(n)
        view[:n] = src[pos:pos + n]
        reader.buffer_updated(n)
        if after is not None:
            after()
        pos += n
    reader.close()


class RedirectPlan:
    """Flags and expected digests of a redirected attempt (see module)."""

    def __init__(self, data: bytes, chunk: int, held: float = 0.5,
                 frontier: float = 0.25) -> None:
        with fastpath.forced(fastpath.available()):
            tracker = src.SourceTracker(None, SEED)  # type: ignore
            reader = StreamReader(tracker)
            _feed(reader, data, chunk)
        assert reader.ram_start is not None
        self.layout = Layout.from_start(reader.ram_start)
        self.digests = tracker.digests
        total = self.layout.total_pages
        self.held_below = int(total * held)
        self.frontier = int(total * frontier)

    def tables(self) -> tuple[list[bytearray], list[bytearray]]:
        flags, expected = [], []
        for idx, base in enumerate(self.layout.bases):
            n = self.layout.npages[idx]
            held = max(0, min(n, self.held_below - base))
            fl = bytearray(n)
            fl[:held] = bytes([planmod.FLAG_REMOTE]) * held
            ex = bytearray(n * DIGEST_LEN)
            ex[:held * DIGEST_LEN] = self.digests[idx][:held * DIGEST_LEN]
            flags.append(fl)
            expected.append(ex)
        return flags, expected


def filter_once(data: bytes, chunk: int, plan: RedirectPlan
                ) -> dict[str, Any]:
    """One timed pass of the source filter over ``data``."""
    flags, expected = plan.tables()
    conf = types.SimpleNamespace(assist_buffer_mib=256)
    s = src.SourceSession(conf, "00000000-0000-0000-0000-0000000000be",
                          "bench", 1, 0, "127.0.0.1", 0)
    key = os.urandom(32)
    header = bytes(protocol.FRAME_HEADER_LEN)
    sent = [0, 0]
    try:
        s.frontier = plan.frontier
        f = SourceFilter(s, plan.layout, flags, expected, SEED)
        reader = StreamReader(f)

        def frame() -> None:
            out = f.w.take()
            if out:
                protocol._mac(key, protocol._SEQ.pack(sent[0]), header, out)
                sent[0] += 1
                sent[1] += len(out)

        c0, t0 = time.process_time(), time.perf_counter()
        _feed(reader, data, chunk, frame)
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        return {"cpu_s": cpu, "wall_s": wall, "bytes_out": sent[1],
                "pages": reader.pages + reader.zero_pages,
                "dropped": f.dropped, "forwarded_held": f.forwarded_held,
                "kept": len(s.assist)}
    finally:
        s._close_all()


def filter_benchmark(data: bytes, chunk: int, repeat: int
                     ) -> dict[str, dict[str, Any]]:
    """Source filter per core, per path: MB of QEMU stream per CPU-s."""
    plan = RedirectPlan(data, chunk)
    results: dict[str, dict[str, Any]] = {}
    for name in paths():
        runs = []
        with path(name):
            # The pure-Python path is slow: one run is enough for it.
            for _ in range(repeat if name == "native" else 1):
                runs.append(filter_once(data, chunk, plan))
        runs.sort(key=lambda r: r["cpu_s"])
        med = runs[len(runs) // 2]
        med["mb_per_cpu_s"] = len(data) / med["cpu_s"] / MB
        med["runs"] = len(runs)
        results[name] = med
    return results
