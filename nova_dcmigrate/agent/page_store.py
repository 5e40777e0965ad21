"""Every page an agent received for one migration, with content digests.

Why: when a migration is redirected, the old destination's QEMU is killed,
but the pages it received are still worth sending to the new destination.
The store lives in the agent (not in QEMU), keyed by (block, page index),
and records a keyed 128-bit digest of each page (xxh3_128 with a
per-migration seed: the guest controls page content, so digests must not be
predictable) so the source can tell which pages need not be resent.

Memory: one anonymous mmap per RAM block, sized to the block; the kernel
only backs pages that were written, so a store costs what it holds.
"""

from __future__ import annotations

import array
import mmap
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import xxhash

from nova_dcmigrate.stream import fastpath
from nova_dcmigrate.stream import PAGE_SIZE
from nova_dcmigrate.stream import RamBlock
from nova_dcmigrate.stream import RamStart

DIGEST_LEN = 16
ZERO_PAGE = bytes(PAGE_SIZE)

# Per-page state byte.
ABSENT = 0
ZERO = 1
DATA = 2


def zero_digest(seed: int) -> bytes:
    return xxhash.xxh3_128_digest(ZERO_PAGE, seed)


class _BlockStore:
    __slots__ = ("block", "data", "digests", "state", "held", "attempt")

    def __init__(self, block: RamBlock) -> None:
        self.block = block
        n = block.npages
        # mmap(-1, 0) is invalid: keep at least one page.  A private
        # mapping faults in much cheaper than a shared one (measured:
        # first writes into the store dominate a destination agent's CPU).
        self.data = mmap.mmap(-1, max(n, 1) * PAGE_SIZE,
                              flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.digests = bytearray(n * DIGEST_LEN)
        self.state = bytearray(n)
        # Attempt that last wrote each page: a newer attempt's copy of a
        # page supersedes an older one held elsewhere.
        self.attempt = array.array("H", bytes(2 * n))
        self.held = 0


@dataclass(frozen=True)
class StoreCounters:
    pages: int          # pages held with data
    zero_pages: int     # pages held as zero
    bytes_held: int     # PAGE_SIZE * (pages + zero_pages)


class PageStore:
    """Pages of one migration; thread-safe for one writer and readers."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._zero_digest = zero_digest(seed)
        self._blocks: list[_BlockStore] = []
        self._by_name: dict[str, _BlockStore] = {}
        self.ram_start: RamStart | None = None
        self._lock = threading.Lock()
        self._pages = 0
        self._zero_pages = 0

    @property
    def configured(self) -> bool:
        return self.ram_start is not None

    def configure(self, start: RamStart) -> None:
        """Size the store from the stream's RAM block list.

        A second attempt of the same migration announces the same blocks;
        the store keeps its pages then.  A different layout is a new VM
        shape and resets the store.
        """
        with self._lock:
            if self.ram_start is not None:
                old = [(b.name, b.used_length) for b in self.ram_start.blocks]
                new = [(b.name, b.used_length) for b in start.blocks]
                if old == new:
                    self.ram_start = start
                    return
                self._close_blocks()
            self.ram_start = start
            self._blocks = [_BlockStore(b) for b in start.blocks]
            self._by_name = {b.block.name: b for b in self._blocks}
            self._pages = self._zero_pages = 0

    def digest_of(self, data: bytes | memoryview) -> bytes:
        return xxhash.xxh3_128_digest(data, self.seed)

    def put_page(self, block: RamBlock, page: int,
                 data: bytes | memoryview, attempt: int = 0) -> bytes:
        """Store one page; returns its digest."""
        bs = self._blocks[block.index]
        bs.attempt[page] = attempt
        off = page * PAGE_SIZE
        bs.data[off:off + PAGE_SIZE] = data
        d = xxhash.xxh3_128_digest(data, self.seed)
        di = page * DIGEST_LEN
        bs.digests[di:di + DIGEST_LEN] = d
        st = bs.state[page]
        if st != DATA:
            if st == ZERO:
                self._zero_pages -= 1
            else:
                bs.held += 1
            self._pages += 1
            bs.state[page] = DATA
        return d

    def put_records(self, block: RamBlock, buf: bytearray, pos: int,
                    end: int, attempt: int = 0) -> tuple[int, int, int]:
        """Store a run of CONTINUE page/zero records of ``block`` from a
        stream reader's buffer in native code (:mod:`fastpath`); same
        effect as :meth:`put_page`/:meth:`put_zero` for each.

        :returns: (position after the run, pages, zero pages).
        """
        native = fastpath.native
        if native is None:
            return pos, 0, 0
        bs = self._blocks[block.index]
        pos, pages, zeros, d_data, d_zero, d_held = native.store_records(
            buf, pos, end, block.used_length, bs.data, bs.digests,
            bs.state, bs.attempt, attempt, self.seed, self._zero_digest)
        self._pages += d_data
        self._zero_pages += d_zero
        bs.held += d_held
        return pos, pages, zeros

    def put_zero(self, block: RamBlock, page: int, attempt: int = 0) -> None:
        bs = self._blocks[block.index]
        bs.attempt[page] = attempt
        st = bs.state[page]
        if st == ZERO:
            return
        if st == DATA:
            self._pages -= 1
            off = page * PAGE_SIZE
            bs.data[off:off + PAGE_SIZE] = ZERO_PAGE
        else:
            bs.held += 1
        self._zero_pages += 1
        bs.state[page] = ZERO
        di = page * DIGEST_LEN
        bs.digests[di:di + DIGEST_LEN] = self._zero_digest

    def block_named(self, name: str) -> RamBlock:
        return self._by_name[name].block

    def block_at(self, index: int) -> RamBlock:
        return self._blocks[index].block

    def page_at(self, index: int, page: int) -> memoryview | None:
        """Page content by block index; None for a zero page."""
        bs = self._blocks[index]
        if bs.state[page] != DATA:
            return None
        off = page * PAGE_SIZE
        return memoryview(bs.data)[off:off + PAGE_SIZE]

    def state_at(self, index: int, page: int) -> int:
        return self._blocks[index].state[page]

    def inventory_ranges(self, max_count: int = 65536
                         ) -> Iterator[tuple[int, int, bytes, bytes, bytes]]:
        """(block index, first page, states, be16 attempts, digests) in
        ranges of at most ``max_count`` pages, for the wire."""
        for idx, bs in enumerate(self._blocks):
            n = len(bs.state)
            for first in range(0, n, max_count):
                last = min(n, first + max_count)
                att = bs.attempt[first:last]
                if sys.byteorder == "little":
                    att.byteswap()          # wire order is big-endian
                yield (idx, first, bytes(bs.state[first:last]),
                       att.tobytes(),
                       bytes(bs.digests[first * DIGEST_LEN:
                                        last * DIGEST_LEN]))

    def state(self, block_name: str, page: int) -> int:
        return self._by_name[block_name].state[page]

    def digest(self, block_name: str, page: int) -> bytes | None:
        bs = self._by_name[block_name]
        if bs.state[page] == ABSENT:
            return None
        di = page * DIGEST_LEN
        return bytes(bs.digests[di:di + DIGEST_LEN])

    def page(self, block_name: str, page: int) -> bytes | None:
        bs = self._by_name[block_name]
        st = bs.state[page]
        if st == ABSENT:
            return None
        if st == ZERO:
            return ZERO_PAGE
        off = page * PAGE_SIZE
        return bs.data[off:off + PAGE_SIZE]

    def inventory(self) -> Iterator[tuple[str, int, bytes]]:
        """Yield (block name, page, digest) for every held page."""
        for bs in self._blocks:
            name, st, dg = bs.block.name, bs.state, bs.digests
            for page in range(len(st)):
                if st[page]:
                    di = page * DIGEST_LEN
                    yield name, page, bytes(dg[di:di + DIGEST_LEN])

    def counters(self) -> StoreCounters:
        return StoreCounters(self._pages, self._zero_pages,
                             (self._pages + self._zero_pages) * PAGE_SIZE)

    def _close_blocks(self) -> None:
        for bs in self._blocks:
            bs.data.close()
        self._blocks = []
        self._by_name = {}

    def close(self) -> None:
        with self._lock:
            self._close_blocks()
            self.ram_start = None
