"""Source side of a redirect: the stream without the pages held elsewhere.

A redirected attempt's new destination already holds many pages (itself,
or via holders that relay them).  The source agent re-encodes QEMU's
stream without those, except where the frontier says it should send them
itself (:mod:`.frontier`).
"""

from __future__ import annotations

from typing import Any
from typing import TYPE_CHECKING

import xxhash

from nova_dcmigrate.agent import exception
from nova_dcmigrate.agent.layout import Layout
from nova_dcmigrate.agent.page_store import DIGEST_LEN
from nova_dcmigrate.agent.page_store import zero_digest
from nova_dcmigrate.agent import plan as planmod
from nova_dcmigrate.stream import PAGE_SIZE
from nova_dcmigrate.stream import Preamble
from nova_dcmigrate.stream import RamBlock
from nova_dcmigrate.stream import RamStart
from nova_dcmigrate.stream import StreamVisitor
from nova_dcmigrate.stream import StreamWriter
from nova_dcmigrate.stream import fastpath
from nova_dcmigrate.stream.constants import CMD_SWITCHOVER_START
from nova_dcmigrate.stream.constants import SECTION_END
from nova_dcmigrate.stream.constants import SECTION_PART

if TYPE_CHECKING:
    from nova_dcmigrate.agent.source import SourceSession


class SourceFilter(StreamVisitor):
    """Source side of a redirect: drops pages the destination will hold.

    A page is dropped iff its digest equals what the new destination is
    going to hold for it (reference section 2.5, rule 1) -- except held
    pages below the frontier during the first pass, which the source
    sends itself so that it and the holders finish together.  Held pages
    skipped above the frontier are kept (within a budget) so that a later
    raise of the frontier can still be honoured: :meth:`emit_assist`.
    """

    def __init__(self, session: SourceSession, layout: Layout,
                 flags: list[bytearray], expected: list[bytearray],
                 seed: int) -> None:
        self.s = session
        self.layout = layout
        self.flags = flags
        self.expected = expected
        self.seed = seed
        self.zero = zero_digest(seed)
        self.w = StreamWriter()
        self.covered = [bytearray(n) for n in layout.npages]
        self.ncovered = 0
        self.position = 0
        self.pass1_done = False
        self.dropped = 0
        self.dropped_bytes = 0
        self.forwarded_held = 0
        # The switchover has begun: no more pages of our own in the stream.
        self.completing = False
        self._native: Any = fastpath.native
        if self._native is not None:
            self.fast_records = self._fast_records

    def _fast_records(self, buf: bytearray, pos: int, end: int,
                      block: RamBlock) -> tuple[int, int, int]:
        """:meth:`on_page`/:meth:`on_zero` for a run of records, in native
        code, under the frontier lock as
        :meth:`SourceSession.held_page_below_frontier`.
        """
        target = self.w.native_target(block)
        if target is None:
            return pos, 0, 0
        out, idstr, cont = target
        idx = block.index
        s = self.s
        layout = self.layout
        with s._frontier_lock:
            (pos, pages, zeros, ncovered, position, dropped, forwarded,
             kept, s.lowest_skip, emitted) = self._native.filter_records(
                buf, pos, end, block, layout.bases[idx], self.covered[idx],
                self.ncovered, layout.total_pages, self.flags[idx],
                self.expected[idx], self.seed, self.zero, s.frontier,
                s.assist, s.assist_budget, s.lowest_skip, out, idstr, cont)
        if kept:
            s.counters["assist_pages_kept"] = \
                s.counters.get("assist_pages_kept", 0) + kept
        if emitted:
            self.w.native_appended(block)
        if position >= 0:
            self.position = position
        self.ncovered = ncovered
        if ncovered == layout.total_pages:
            self.pass1_done = True
        self.dropped += dropped
        self.dropped_bytes += dropped * PAGE_SIZE
        self.forwarded_held += forwarded
        return pos, pages, zeros

    def on_preamble(self, preamble: Preamble) -> None:
        self.w.raw(preamble.raw)

    def on_command(self, cmd: int, data: bytes, raw: bytes) -> None:
        if cmd == CMD_SWITCHOVER_START:
            self.completing = True
        self.w.raw(raw)

    def on_ram_start(self, start: RamStart) -> None:
        mine = Layout.from_start(start)
        if (mine.names, mine.lengths) != (self.layout.names,
                                          self.layout.lengths):
            raise exception.SessionFailed(
                migration_id=self.s.migration_id,
                reason="the VM's RAM layout changed since the pages were "
                       "received; the held pages cannot be used")
        self.w.ram_start(start)

    def on_section_begin(self, kind: int, section_id: int) -> None:
        if kind == SECTION_END:
            self.completing = True
        self.w.begin_section(kind)

    def _cover(self, idx: int, page: int) -> None:
        cov = self.covered[idx]
        if not cov[page]:
            cov[page] = 1
            self.ncovered += 1
            self.position = self.layout.bases[idx] + page
            if self.ncovered == self.layout.total_pages:
                self.pass1_done = True

    def on_page(self, block: RamBlock, page: int, data: memoryview) -> None:
        idx = block.index
        if not self.pass1_done:
            self._cover(idx, page)
        d = xxhash.xxh3_128_digest(data, self.seed)
        fl = self.flags[idx]
        flag = fl[page]
        di = page * DIGEST_LEN
        exp = self.expected[idx]
        if flag and exp[di:di + DIGEST_LEN] == d:
            if (flag == planmod.FLAG_REMOTE and not self.pass1_done
                    and self.s.held_page_below_frontier(
                        self.layout.bases[idx] + page, block, page, data)):
                self.forwarded_held += 1
            else:
                self.dropped += 1
                self.dropped_bytes += len(data)
                return
        elif self.s.assist:
            self.s.forget_assist(self.layout.bases[idx] + page)
        self.w.page(block, page, data)
        exp[di:di + DIGEST_LEN] = d
        fl[page] = 3          # the destination holds what we sent

    def on_zero(self, block: RamBlock, page: int) -> None:
        idx = block.index
        if not self.pass1_done:
            self._cover(idx, page)
        # Zero records are 9-16 bytes: always send them (reference 2.5).
        if self.s.assist:
            self.s.forget_assist(self.layout.bases[idx] + page)
        self.w.zero(block, page)
        di = page * DIGEST_LEN
        self.expected[idx][di:di + DIGEST_LEN] = self.zero
        self.flags[idx][page] = 3

    def on_section_end(self, kind: int, section_id: int) -> None:
        self.w.end_section()

    def on_tail(self, data: memoryview) -> None:
        self.completing = True
        self.w.raw(data)

    def emit_assist(self, pages: list[tuple[RamBlock, int, bytes]]) -> bool:
        """Write held pages the frontier now gives back to the source.

        Between reads from QEMU the writer is either between sections or
        inside one of QEMU's PART sections; pages may go into either.
        Returns False (nothing written) once the switchover has begun: the
        holders still relay those pages then.
        """
        w = self.w
        if not w.ram_started or self.completing:
            return False
        own = not w.section_kind
        if own:
            w.begin_section(SECTION_PART)
        for block, page, data in pages:
            w.page(block, page, data)
        if own:
            w.end_section()
        self.forwarded_held += len(pages)
        return True
