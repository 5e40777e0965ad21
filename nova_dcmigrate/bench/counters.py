"""What the agents' status says about the attempts after a redirect.

Input is :meth:`RedirectableMigration.status`: per lab host the agent's
``get_status`` answer, whose ``attempts`` list holds one entry per attempt
that host took part in.  The source agent's entry of a redirected attempt
carries, after its filter:

``bytes_sent``            stream bytes put on the source's link
``pages_dropped``         pages not sent because the destination gets
                          them elsewhere (a holder or its own store)
``held_pages_forwarded``  held pages the source sent itself (below the
                          frontier of the optimised split)

and the destination's entry a ``redirect`` dict with per-holder ``pages``,
``bytes`` (relay wire bytes), ``injected`` (pages actually used) and
``dropped`` (pages superseded by a newer copy from the source).

Source-only and held bytes, as used by the bound (documented choice): the
source's ``bytes_sent`` minus the held pages it forwarded, each costing
one page record (:data:`PAGE_RECORD_BYTES`), is source-only; held is what
the holders relayed and the destination used (each holder's wire bytes
scaled by injected/received pages) plus those forwarded held pages.  Pages
the new destination already held itself cross no link and count in
neither.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping

#: A page record on the wire: 8-byte header (offset | flags) + 4 KiB.
PAGE_RECORD_BYTES = 4096 + 8


@dataclasses.dataclass
class HolderRelay:
    pages: int = 0
    bytes: int = 0
    injected: int = 0
    dropped: int = 0

    @property
    def used_bytes(self) -> int:
        """Wire bytes of the pages the destination injected."""
        if self.pages <= 0:
            return 0
        return int(round(self.bytes * min(self.injected, self.pages)
                         / self.pages))


@dataclasses.dataclass
class AttemptCounters:
    """One attempt after a redirect, as the agents counted it."""

    number: int
    dst_host: str
    holders: list[str]
    #: Bytes the source agent put on its link for this attempt.
    source_bytes: int = 0
    pages_dropped: int = 0
    bytes_dropped: int = 0
    held_pages_forwarded: int = 0
    #: Bytes QEMU wrote to the source agent (before filtering).
    qemu_stream_bytes: int = 0
    local_pages_injected: int = 0
    relays: dict[str, HolderRelay] = dataclasses.field(default_factory=dict)
    #: How the split went: first and last frontier, pages the holders were
    #: told to skip, when the source's first pass and the relays ended.
    split: dict[str, Any] = dataclasses.field(default_factory=dict)
    source_state: str | None = None
    destination_state: str | None = None
    #: The destination's count of the pages it needed after the redirect,
    #: by final content (``nonzero``, ``source_only``, ``held``,
    #: ``local``; see ``DestinationSession.needed_pages``); None if not
    #: reported.
    needed: dict[str, int] | None = None

    @property
    def forwarded_held_bytes(self) -> int:
        return self.held_pages_forwarded * PAGE_RECORD_BYTES

    @property
    def source_only_bytes(self) -> int:
        return max(0, self.source_bytes - self.forwarded_held_bytes)

    @property
    def held_bytes(self) -> int:
        return (sum(r.used_bytes for r in self.relays.values())
                + self.forwarded_held_bytes)


def _attempt_entry(status: Mapping[str, Any], host: str, number: int,
                   role: str) -> Mapping[str, Any] | None:
    host_status = status.get(host) or {}
    for entry in host_status.get("attempts", []) or []:
        if entry.get("attempt") == number and entry.get("role") == role:
            return dict(entry)
    return None


def attempt_counters(status: Mapping[str, Any], src_host: str, number: int,
                     dst_host: str, holders: Iterable[str]
                     ) -> AttemptCounters:
    """Counters of attempt ``number`` (to ``dst_host``) from a status."""
    out = AttemptCounters(number=number, dst_host=dst_host,
                          holders=list(holders))
    src = _attempt_entry(status, src_host, number, "source")
    if src is not None:
        c = src.get("counters", {})
        out.source_state = src.get("state")
        out.qemu_stream_bytes = int(c.get("stream_bytes", 0))
        # Without a redirect plan the source forwards QEMU's stream as is.
        out.source_bytes = int(c.get("bytes_sent", c.get("stream_bytes", 0)))
        out.pages_dropped = int(c.get("pages_dropped", 0))
        out.bytes_dropped = int(c.get("bytes_dropped", 0))
        out.held_pages_forwarded = int(c.get("held_pages_forwarded", 0))
    dst = _attempt_entry(status, dst_host, number, "destination")
    if dst is not None:
        out.destination_state = dst.get("state")
        red = dst.get("redirect") or {}
        out.local_pages_injected = int(red.get("local_pages_injected", 0))
        if red.get("needed"):
            out.needed = {k: int(v) for k, v in red["needed"].items()}
        if red:
            out.split = {
                "attempt": number,
                "first_frontier": red.get("first_frontier"),
                "frontier": red.get("frontier"),
                "unheld_page_cost": red.get("unheld_page_cost"),
                "pages_superseded": red.get("pages_superseded", 0),
                **(red.get("timeline") or {})}
        for host, h in (red.get("holders") or {}).items():
            out.relays[host] = HolderRelay(
                pages=int(h.get("pages", 0)), bytes=int(h.get("bytes", 0)),
                injected=int(h.get("injected", 0)),
                dropped=int(h.get("dropped", 0)))
    return out


@dataclasses.dataclass
class RedirectTotals:
    """Sums over every attempt after the first redirect."""

    bytes_from_source: int
    bytes_relayed: dict[str, int]
    relay_detail: dict[str, dict[str, int]]
    pages_deduplicated: int
    local_pages_reused: int


def totals(attempts: Iterable[AttemptCounters]) -> RedirectTotals:
    src = dedup = local = 0
    relayed: dict[str, int] = {}
    detail: dict[str, dict[str, int]] = {}
    for a in attempts:
        src += a.source_bytes
        dedup += a.pages_dropped
        local += a.local_pages_injected
        for host, r in a.relays.items():
            relayed[host] = relayed.get(host, 0) + r.bytes
            d = detail.setdefault(host, {"pages": 0, "bytes": 0,
                                         "injected": 0, "dropped": 0})
            d["pages"] += r.pages
            d["bytes"] += r.bytes
            d["injected"] += r.injected
            d["dropped"] += r.dropped
    return RedirectTotals(bytes_from_source=src, bytes_relayed=relayed,
                          relay_detail=detail, pages_deduplicated=dedup,
                          local_pages_reused=local)
