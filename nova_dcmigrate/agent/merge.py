"""New-destination side of a redirect: one valid stream from many senders.

The destination QEMU must see a single precopy stream.  The source's
stream (already filtered by the source agent) is re-framed into our own
PART sections; pages relayed by holders -- and, on a resume, pages this
host's own store still has -- are injected as PART sections between them
(QEMU stream reference, section 2.3: re-framing and re-ordering are fine,
the newest copy of a page must be written last).

Merge rule (reference section 2.5): a relayed page is injected only if the
source has not sent that page in this attempt; every relayed page is in
the stream before SWITCHOVER_START / END(ram), so the relay backlog can
never land in the switchover downtime.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from typing import Any
from collections.abc import Callable
from collections.abc import Sequence

from oslo_log import log as logging

from nova_dcmigrate.agent import exception
from nova_dcmigrate.agent import expected
from nova_dcmigrate.agent.layout import Layout
from nova_dcmigrate.agent.page_store import PageStore
from nova_dcmigrate.agent import plan as planmod
from nova_dcmigrate.agent import protocol
from nova_dcmigrate.agent.protocol import FrameType
from nova_dcmigrate.agent import relay_wire as wire
from nova_dcmigrate.stream import constants as c
from nova_dcmigrate.stream import fastpath
from nova_dcmigrate.stream import Preamble
from nova_dcmigrate.stream import RamBlock
from nova_dcmigrate.stream import RamStart
from nova_dcmigrate.stream import StreamVisitor
from nova_dcmigrate.stream import StreamWriter

LOG = logging.getLogger(__name__)

LOCAL = 0      # holder index of this host's own store in the assignment

_BE64 = struct.Struct(">Q")
_PAGE_REC = 8 + c.PAGE_SIZE        # PAGE|CONTINUE record
_ZERO_REC = 8 + 1                  # ZERO|CONTINUE record


class RelayPuller:
    """Our end of one holder's RELAY connection."""

    def __init__(self, index: int, host: str,
                 conn: protocol.FramedConnection) -> None:
        self.index = index
        self.host = host
        self.conn = conn
        self.layout: Layout | None = None
        self.inventory: planmod.Inventory | None = None
        self.done = threading.Event()
        self.failed: str | None = None
        self.pages = 0
        self.bytes = 0
        self.injected = 0
        self.dropped = 0
        self.lowest: int | None = None

    def read_inventory(
            self, check: Callable[[list[tuple[str, int]]], None] | None = None
    ) -> None:
        """:param check: called with the holder's RAM blocks before
            anything is sized from them; raises to refuse them."""
        ftype, payload = self.conn.recv()
        if ftype != FrameType.LAYOUT:
            raise exception.PeerProtocolError(
                peer=self.conn.peer, reason="expected LAYOUT")
        self.layout = Layout.from_json(payload, self.conn.peer)
        if check is not None:
            check(list(zip(self.layout.names, self.layout.lengths)))
        inv = planmod.Inventory.empty(self.layout)
        while True:
            ftype, payload = self.conn.recv()
            if ftype == FrameType.INVENTORY_END:
                break
            if ftype != FrameType.INVENTORY:
                raise exception.PeerProtocolError(
                    peer=self.conn.peer, reason="expected INVENTORY")
            inv.add_range(*wire.decode_inventory(payload, self.layout,
                                                 self.conn.peer))
        self.inventory = inv

    def send_assignment(self, assignment: planmod.Assignment) -> None:
        layout = assignment.layout
        owner = assignment.owner
        # One byte per page, 1 where this holder owns it (C speed: the
        # holder waits for this before it relays anything).
        mine = bytes(1 if b == self.index & 0xFF else 0 for b in range(256))
        for idx, base in enumerate(layout.bases):
            n = layout.npages[idx]
            for first in range(0, n, wire.MAX_RANGE):
                last = min(n, first + wire.MAX_RANGE)
                if self.index < 0xFF:
                    marks = expected.owner_bytes(
                        owner, base + first, base + last).translate(mine)
                else:
                    marks = bytes(1 if owner[base + p] == self.index else 0
                                  for p in range(first, last))
                if any(marks):
                    self.conn.send(FrameType.ASSIGN,
                                   wire.encode_assign(idx, first, marks))
        self.conn.send(FrameType.ASSIGN_END)


class QemuFeed:
    """The single writer to the destination QEMU, shared by all inputs."""

    def __init__(self, qsock: socket.socket, store: PageStore,
                 attempt: int) -> None:
        self.qsock = qsock
        self.store = store
        self.attempt = attempt
        self.writer = StreamWriter()
        self.cond = threading.Condition()
        self.layout: Layout | None = None
        self.start: RamStart | None = None
        self.sent_by_src = bytearray()
        self.relayed = bytearray()
        # The assignment's owner per page (a remote holder: > LOCAL), and
        # the remote-held pages the source has since sent before any
        # relayed copy got in: the holder may skip them (drained by the
        # session).
        self.owner: Sequence[int] = ()
        self.superseded: list[int] = []
        self.relays_closed = False
        self.bytes_to_qemu = 0
        self.relay_pages_injected = 0
        self.relay_pages_dropped = 0
        self.local_pages_injected = 0
        #: Zero pages injected without a record (QEMU reads zero there).
        self.zero_records_elided = 0

    def flush(self) -> None:
        """Write out what the writer holds (caller holds ``cond``)."""
        data = self.writer.take()
        if data:
            try:
                self.qsock.sendall(data)
            except OSError as err:
                raise exception.SessionFailed(
                    migration_id="-", reason="destination QEMU closed the "
                    "stream: %s" % err) from err
            self.bytes_to_qemu += len(data)

    def configure(self, start: RamStart) -> None:
        self.start = start
        self.layout = Layout.from_start(start)
        self.sent_by_src = bytearray(self.layout.total_pages)
        self.relayed = bytearray(self.layout.total_pages)

    def inject(self,
               pages: Sequence[tuple[int, int, memoryview | bytes | None]],
               attempt_of: Callable[[int, int], int] | None = None,
               local: bool = False) -> tuple[int, int]:
        """Inject held pages in one PART section; skips pages the source
        already sent in this attempt.  Returns (injected, dropped)."""
        injected = dropped = 0
        with self.cond:
            if self.relays_closed or self.start is None:
                return 0, len(pages)
            layout = self.layout
            assert layout is not None
            blocks = self.start.blocks
            w = self.writer
            opened = False
            for idx, page, data in pages:
                g = layout.bases[idx] + page
                if self.sent_by_src[g] or self.relayed[g]:
                    dropped += 1
                    continue
                block = blocks[idx]
                att = attempt_of(idx, page) if attempt_of else self.attempt
                if data is None and self.store.reads_zero_in_qemu(idx, page):
                    # Nothing of this attempt wrote it and QEMU's RAM has
                    # a hole there: no record (QEMU would fault the page
                    # in to check it).
                    if not local:
                        self.store.put_zero(block, page, att)
                    self.relayed[g] = 1
                    self.zero_records_elided += 1
                    injected += 1
                    continue
                if not opened:
                    w.begin_section(c.SECTION_PART)
                    opened = True
                if data is None:
                    w.zero(block, page)
                    if not local:
                        self.store.put_zero(block, page, att)
                else:
                    w.page(block, page, data)
                    if not local:
                        self.store.put_page(block, page, data, att)
                self.relayed[g] = 1
                injected += 1
            if opened:
                w.end_section()
                self.flush()
            if local:
                self.local_pages_injected += injected
            else:
                self.relay_pages_injected += injected
                self.relay_pages_dropped += dropped
            self.cond.notify_all()
        return injected, dropped


class MergeVisitor(StreamVisitor):
    """Parses the source's (filtered) stream into the shared feed."""

    def __init__(self, feed: QemuFeed, on_start: Callable[[RamStart], None],
                 before_switchover: Callable[[], None]) -> None:
        self.feed = feed
        self.on_start = on_start
        self.before_switchover = before_switchover
        self.w = feed.writer
        self.section: int | None = None     # source section open
        self.ours_open = False               # our re-framed section open
        self.flushed_relays = False
        if fastpath.native is not None:
            self.fast_records = self._fast_records

    def _fast_records(self, buf: bytearray, pos: int, end: int,
                      block: RamBlock) -> tuple[int, int, int]:
        """:meth:`on_page`/:meth:`on_zero` for a run of CONTINUE records.

        Why: per record these cost several Python calls, which capped a
        redirect's new destination near 1 Gbit/s of pages and stalled it
        (and with it the holders' relays, which need the feed lock) for
        tenths of a second over the zero pages at the end of a first
        pass.  The page store takes the run in native code
        (:meth:`PageStore.put_records`: digests, states, locations); the
        run's bytes go to QEMU as they came (the first record gets its
        block name back when our output did not just name that block);
        only the per-page "sent by the source" marks stay in Python, one
        header read per record.
        """
        f = self.feed
        new, pages, zeros = f.store.put_records(block, buf, pos, end,
                                                f.attempt)
        if new == pos:
            return pos, 0, 0
        self._mark_run(block, buf, pos, new)
        self._ensure_open()
        target = self.w.native_target(block)
        view = memoryview(buf)
        if target is None:
            self._write_run(block, view, pos, new)
            return new, pages, zeros
        out, idstr, cont = target
        if cont:
            out += view[pos:new]
        else:
            (word,) = _BE64.unpack_from(buf, pos)
            out += _BE64.pack(word & ~c.RAM_FLAG_CONTINUE)
            out += idstr
            out += view[pos + 8:new]
        self.w.native_appended(block)
        return new, pages, zeros

    def _write_run(self, block: RamBlock, view: memoryview, pos: int,
                   end: int) -> None:
        """The writer's own encoding of a stored run, record by record
        (when it cannot take the run's bytes as they are)."""
        w, zero = self.w, c.RAM_FLAG_ZERO
        while pos < end:
            (word,) = _BE64.unpack_from(view, pos)
            page = word >> c.PAGE_BITS
            if word & zero:
                w.zero(block, page)
                pos += _ZERO_REC
            else:
                w.page(block, page, view[pos + 8:pos + _PAGE_REC])
                pos += _PAGE_REC

    def _mark_run(self, block: RamBlock, buf: bytearray, pos: int,
                  end: int) -> None:
        """:meth:`_from_source` for every record of a stored run."""
        f = self.feed
        base = f.layout.bases[block.index]  # type: ignore[union-attr]
        sent, relayed, owner = f.sent_by_src, f.relayed, f.owner
        superseded = f.superseded
        unpack = _BE64.unpack_from
        zero = c.RAM_FLAG_ZERO
        while pos < end:
            (word,) = unpack(buf, pos)
            g = base + (word >> c.PAGE_BITS)
            if not sent[g]:
                sent[g] = 1
                if owner and owner[g] > LOCAL and not relayed[g]:
                    superseded.append(g)
            pos += _ZERO_REC if word & zero else _PAGE_REC

    # Called by the session around each chunk.
    def chunk_begin(self) -> None:
        self.feed.cond.acquire()

    def chunk_end(self) -> None:
        try:
            if self.ours_open and self.section == c.SECTION_PART:
                # Re-frame: close our PART so relays may interleave.
                self.w.end_section()
                self.ours_open = False
            self.feed.flush()
        finally:
            self.feed.cond.release()

    def _ensure_open(self) -> None:
        if not self.ours_open:
            assert self.section is not None
            self.w.begin_section(self.section)
            self.ours_open = True

    def _flush_relays(self) -> None:
        if self.flushed_relays:
            return
        self.flushed_relays = True
        # Waits (releasing the feed lock) until every relayed page is in.
        self.feed.flush()
        self.feed.cond.release()
        try:
            self.before_switchover()
        finally:
            self.feed.cond.acquire()
        self.feed.relays_closed = True

    def on_preamble(self, preamble: Preamble) -> None:
        self.w.raw(preamble.raw)

    def on_command(self, cmd: int, data: bytes, raw: bytes) -> None:
        if cmd == c.CMD_SWITCHOVER_START:
            self._flush_relays()
        self.w.raw(raw)

    def on_ram_start(self, start: RamStart) -> None:
        # Same layout as held pages: the store keeps them (resume).
        self.feed.store.configure(start)
        self.feed.configure(start)
        self.w.ram_start(start)
        self.feed.flush()
        # Holders' pages may be injected from now on: wake the relay loops
        # (they would otherwise sleep out their wait).
        self.feed.cond.notify_all()
        self.feed.cond.release()
        try:
            self.on_start(start)
        finally:
            self.feed.cond.acquire()

    def on_section_begin(self, kind: int, section_id: int) -> None:
        if kind == c.SECTION_END:
            self._flush_relays()
        self.section = kind
        self.w.begin_section(kind)
        self.ours_open = True

    def _from_source(self, block: RamBlock, page: int) -> None:
        f = self.feed
        g = f.layout.bases[block.index] + page  # type: ignore
        if not f.sent_by_src[g]:
            f.sent_by_src[g] = 1
            if f.owner and f.owner[g] > LOCAL and not f.relayed[g]:
                f.superseded.append(g)

    def on_page(self, block: RamBlock, page: int, data: memoryview) -> None:
        self._ensure_open()
        f = self.feed
        self._from_source(block, page)
        f.store.put_page(block, page, data, f.attempt)
        self.w.page(block, page, data)

    def on_zero(self, block: RamBlock, page: int) -> None:
        self._ensure_open()
        f = self.feed
        self._from_source(block, page)
        f.store.put_zero(block, page, f.attempt)
        self.w.zero(block, page)

    def on_section_end(self, kind: int, section_id: int) -> None:
        self._ensure_open()
        self.w.end_section()
        self.ours_open = False
        self.section = None

    def on_tail(self, data: memoryview) -> None:
        self.w.raw(data)


class RateMeter:
    """Bytes per second over a sliding window.

    Measured up to *now*, not to the last arrival: frames come in bursts
    (socket buffers), and two frames a millisecond apart say nothing of a
    link's rate; a sender that stopped shows a falling rate.  No measure
    (0.0) before :data:`MIN_SPAN_S` of data.
    """

    MIN_SPAN_S = 0.1

    def __init__(self, window: float = 1.0) -> None:
        self.window = window
        self.samples: list[tuple[float, int]] = []
        self.total = 0

    def add(self, n: int) -> None:
        self.total += n
        now = time.monotonic()
        self.samples.append((now, self.total))
        cutoff = now - self.window
        while len(self.samples) > 2 and self.samples[0][0] < cutoff:
            self.samples.pop(0)

    def rate(self) -> float:
        if len(self.samples) < 2:
            return 0.0
        t0, b0 = self.samples[0]
        b1 = self.samples[-1][1]
        span = time.monotonic() - t0
        return (b1 - b0) / span if span >= self.MIN_SPAN_S else 0.0


def time_stamp() -> Any:
    return time.monotonic()
