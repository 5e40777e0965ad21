"""Every page an agent received for one migration, with content digests.

Why: when a migration is redirected, the old destination's QEMU is killed,
but the pages it received are still worth sending to the new destination.
The store lives in the agent (not in QEMU), keyed by (block, page index),
and records a keyed 128-bit digest of each page (xxh3_128 with a
per-migration seed: the guest controls page content, so digests must not be
predictable) so the source can tell which pages need not be resent.

Memory: the store keeps no copy of the pages it forwarded to a QEMU whose
guest RAM it could open (:mod:`nova_dcmigrate.agent.ram_backing`): it
records where each page is (which QEMU's RAM, held open) and reads it from
there when it must relay it.  A page's digest is recorded as it passes;
:meth:`PageStore.settle` checks the last pages forwarded against what QEMU
really applied (QEMU is stopped during an incoming migration and writes
nothing but the stream into its RAM, but the stream's last bytes may have
been in flight when QEMU was killed), and every page read back for a relay
is checked against its digest.  Per page the store costs 20 bytes (digest,
state, attempt, location): 0.5% of guest RAM.

Fallback: RAM blocks with no shared file (a guest booted with anonymous
RAM, or QEMU's small ROM blocks) are copied into one anonymous mmap per
block, the former store.  Copies are capped per agent (:class:`CopyBudget`);
a page beyond the cap is not kept (its claim is dropped, so a redirect
resends it).
"""

from __future__ import annotations

import array
import errno
import mmap
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from oslo_log import log as logging
import xxhash

from nova_dcmigrate.agent import exception
from nova_dcmigrate.agent.ram_backing import QemuRam
from nova_dcmigrate.agent.ram_backing import RamFile
from nova_dcmigrate.stream import fastpath
from nova_dcmigrate.stream import PAGE_SIZE
from nova_dcmigrate.stream import RamBlock
from nova_dcmigrate.stream import RamStart

LOG = logging.getLogger(__name__)

DIGEST_LEN = 16
ZERO_PAGE = bytes(PAGE_SIZE)
#: Location of a page: in the store's own copy (0), else the index of the
#: held QEMU RAM it is in.
COPY = 0
#: Most QEMU RAMs one store holds (one per attempt to this host).
MAX_BACKINGS = 255
#: Pages forwarded last that settle() checks against QEMU's RAM: the
#: stream QEMU had not applied when it was killed is at most what the
#: socket buffers between agent and QEMU hold (a few MiB), far below this
#: (64 MiB).
RECENT_PAGES = 16384
#: Pages of a block sampled to tell which of several same-sized RAM files
#: holds it.
SAMPLES = 16

# Per-page state byte.
ABSENT = 0
ZERO = 1
DATA = 2


def zero_digest(seed: int) -> bytes:
    return xxhash.xxh3_128_digest(ZERO_PAGE, seed)


class CopyBudget:
    """Pages all copy stores of one agent may hold (the fallback's cap)."""

    def __init__(self, max_bytes: int | None) -> None:
        self.limit = None if max_bytes is None else max_bytes // PAGE_SIZE
        self.used = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.limit is not None and self.used >= self.limit:
                return False
            self.used += 1
            return True

    def give(self, n: int = 1) -> None:
        with self._lock:
            self.used -= n

    def reserve(self, n: int) -> bool:
        """Take ``n`` pages at once, or none (the native copy path
        reserves the most a run of records can add, then gives back
        what it did not use)."""
        with self._lock:
            if self.limit is not None and self.used + n > self.limit:
                return False
            self.used += n
            return True


class _BlockStore:
    __slots__ = ("block", "_data", "digests", "state", "held", "attempt",
                 "where", "target", "copies", "remote")

    def __init__(self, block: RamBlock) -> None:
        self.block = block
        n = block.npages
        self._data: mmap.mmap | None = None
        self.digests = bytearray(n * DIGEST_LEN)
        self.state = bytearray(n)
        # Attempt that last wrote each page: a newer attempt's copy of a
        # page supersedes an older one held elsewhere.
        self.attempt = array.array("H", bytes(2 * n))
        # Where each DATA page is: COPY or a held QEMU RAM.
        self.where = bytearray(n)
        # Where pages arriving now go.
        self.target = COPY
        self.held = 0
        self.copies = 0
        # DATA pages in a held QEMU RAM (where != COPY).
        self.remote = 0

    @property
    def data(self) -> mmap.mmap:
        """The copy area, mapped on first use (a private mapping faults
        in much cheaper than a shared one; the kernel backs only pages
        written)."""
        if self._data is None:
            self._data = mmap.mmap(
                -1, max(len(self.state), 1) * PAGE_SIZE,
                flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        return self._data

    def close(self) -> None:
        if self._data is not None:
            self._data.close()
            self._data = None


@dataclass(frozen=True)
class StoreCounters:
    pages: int          # pages held with data
    zero_pages: int     # pages held as zero
    bytes_held: int     # PAGE_SIZE * (pages + zero_pages)
    copied_bytes: int = 0   # of which kept as the agent's own copy
    backing_bytes: int = 0  # memory of the QEMU RAM files held open


class PageStore:
    """Pages of one migration; thread-safe for one writer and readers.

    :param budget: cap of the copies (None: unlimited, a private budget).
    :param ram_limit: most bytes of RAM blocks a stream may announce (the
        domain's memory plus allowance for ROMs and video RAM); None: no
        check.
    """

    def __init__(self, seed: int, *, budget: CopyBudget | None = None,
                 ram_limit: int | None = None,
                 migration_id: str = "-") -> None:
        self.seed = seed
        self.migration_id = migration_id
        self.ram_limit = ram_limit
        self.budget = budget or CopyBudget(None)
        self._zero_digest = zero_digest(seed)
        self._blocks: list[_BlockStore] = []
        self._by_name: dict[str, _BlockStore] = {}
        self.ram_start: RamStart | None = None
        self._lock = threading.Lock()
        self._pages = 0
        self._zero_pages = 0
        # Held QEMU RAMs by location index (COPY: none), with the number
        # of pages each still holds for us.
        self._backings: list[QemuRam | None] = [None]
        self._refs: list[int] = [0]
        self._current = COPY
        # (location, block index) -> the RAM file with that block, once
        # known; None: none does.
        self._files: dict[tuple[int, int], RamFile | None] = {}
        # Ring of the last RECENT_PAGES pages forwarded into a held RAM,
        # each (block index << 32 | page); _recent_count were appended
        # since the last settle (the native code appends too).
        self._recent = array.array("Q", bytes(8 * RECENT_PAGES))
        self._recent_count = 0
        self._full_logged = False
        self.verified_pages = 0
        self.corrected_pages = 0

    @property
    def configured(self) -> bool:
        return self.ram_start is not None

    def check_layout(self, blocks: list[tuple[str, int]]) -> None:
        """Refuse RAM blocks the domain cannot have, before allocating.

        :raises RamLayoutTooLarge: the blocks sum to more than the limit.
        """
        if self.ram_limit is None or not blocks:
            return
        total = sum(length for _n, length in blocks)
        name, largest = max(blocks, key=lambda b: b[1])
        if total > self.ram_limit:
            raise exception.RamLayoutTooLarge(
                migration_id=self.migration_id, announced=total,
                block=name, largest=largest, limit=self.ram_limit)

    def configure(self, start: RamStart) -> None:
        """Size the store from the stream's RAM block list.

        A second attempt of the same migration announces the same blocks;
        the store keeps its pages then.  A different layout is a new VM
        shape and resets the store.

        :raises RamLayoutTooLarge: see :meth:`check_layout`.
        """
        self.check_layout([(b.name, b.used_length) for b in start.blocks])
        with self._lock:
            if self.ram_start is not None:
                old = [(b.name, b.used_length) for b in self.ram_start.blocks]
                new = [(b.name, b.used_length) for b in start.blocks]
                if old == new:
                    self.ram_start = start
                    self._retarget()
                    return
                self._close_blocks()
            self.ram_start = start
            self._blocks = [_BlockStore(b) for b in start.blocks]
            self._by_name = {b.block.name: b for b in self._blocks}
            self._pages = self._zero_pages = 0
            self._retarget()

    # -- held QEMU RAM ------------------------------------------------------
    def attach(self, ram: QemuRam) -> bool:
        """Pages forwarded from now on are in ``ram`` (the RAM of the
        QEMU this agent feeds), not copied; False if the store holds too
        many RAMs already (pages are copied then)."""
        with self._lock:
            if len(self._backings) >= MAX_BACKINGS:
                return False
            self._backings.append(ram)
            self._refs.append(0)
            self._current = len(self._backings) - 1
            self._retarget()
            return True

    def _retarget(self) -> None:
        """Choose where each block's arriving pages go (caller locks)."""
        ram = self._backings[self._current]
        for idx, bs in enumerate(self._blocks):
            if ram is not None and ram.candidates(bs.block.used_length):
                bs.target = self._current
            else:
                bs.target = COPY

    def begin_attempt(self) -> None:
        """A new writer: settle what the last one left, copy by default
        until :meth:`attach`."""
        self.settle()
        with self._lock:
            self._current = COPY
            self._retarget()
            for loc, ram in enumerate(self._backings):
                if ram is not None and not self._refs[loc]:
                    ram.close()

    def settle(self) -> None:
        """Make every claim true before it is announced or reused.

        Tells same-sized RAM files apart by sampled digests (a block no
        file holds loses its pages), and checks the last pages forwarded
        against what QEMU applied: a page QEMU did not get keeps the
        content QEMU has, with that content's digest.  Call with no
        writer active.
        """
        with self._lock:
            needed = set()
            for i, bs in enumerate(self._blocks):
                if bs.held == 0:
                    continue
                for loc in set(bs.where) - {COPY}:
                    if (loc, i) not in self._files:
                        needed.add((loc, i))
            recent = self._take_recent()
            for loc, i in sorted(needed):
                self._files[(loc, i)] = self._identify(loc, i, recent)
                if self._files[(loc, i)] is None:
                    self._drop_location(loc, i)
            for i, page in recent:
                self._verify_recent(i, page)

    def _take_recent(self) -> set[tuple[int, int]]:
        """(block index, page) of the last pages forwarded into a held
        RAM since the last call (at most RECENT_PAGES)."""
        n = min(self._recent_count, RECENT_PAGES)
        self._recent_count = 0
        return {(v >> 32, v & 0xFFFFFFFF) for v in self._recent[:n]}

    def _identify(self, loc: int, idx: int,
                  recent: set[tuple[int, int]]) -> RamFile | None:
        ram = self._backings[loc]
        bs = self._blocks[idx]
        if ram is None or ram.closed:
            return None
        cands = ram.candidates(bs.block.used_length)
        samples = []
        for page in range(len(bs.state)):
            if bs.state[page] == DATA and bs.where[page] == loc and \
                    (idx, page) not in recent:
                samples.append(page)
        step = max(1, len(samples) // SAMPLES)
        samples = samples[::step][:SAMPLES]
        for f in cands:
            if all(self._matches(f, bs, p) for p in samples):
                return f
        LOG.warning("migration %(mid)s: no RAM file of QEMU pid %(pid)d "
                    "holds block %(block)s; its pages are not kept",
                    {"mid": self.migration_id, "pid": ram.pid,
                     "block": bs.block.name})
        return None

    def _matches(self, f: RamFile, bs: _BlockStore, page: int) -> bool:
        data = self._read(f, page)
        di = page * DIGEST_LEN
        return data is not None and xxhash.xxh3_128_digest(
            data, self.seed) == bs.digests[di:di + DIGEST_LEN]

    def _drop_location(self, loc: int, idx: int) -> None:
        bs = self._blocks[idx]
        for page in range(len(bs.state)):
            if bs.state[page] == DATA and bs.where[page] == loc:
                self._forget(bs, page)

    def _verify_recent(self, idx: int, page: int) -> None:
        bs = self._blocks[idx]
        loc = bs.where[page]
        if bs.state[page] != DATA or loc == COPY:
            return
        f = self._files.get((loc, idx))
        data = self._read(f, page) if f is not None else None
        if data is None:
            self._forget(bs, page)
            return
        self.verified_pages += 1
        d = xxhash.xxh3_128_digest(data, self.seed)
        di = page * DIGEST_LEN
        if bs.digests[di:di + DIGEST_LEN] == d:
            return
        self.corrected_pages += 1
        if data == ZERO_PAGE:
            self._forget(bs, page)
            bs.state[page] = ZERO
            bs.held += 1
            self._zero_pages += 1
            bs.digests[di:di + DIGEST_LEN] = self._zero_digest
        else:
            bs.digests[di:di + DIGEST_LEN] = d

    @staticmethod
    def _read(f: RamFile | None, page: int) -> bytes | None:
        if f is None:
            return None
        try:
            data = os.pread(f.fd, PAGE_SIZE, page * PAGE_SIZE)
        except OSError:
            return None
        return data if len(data) == PAGE_SIZE else None

    def _unref(self, loc: int) -> None:
        self._refs[loc] -= 1
        if self._refs[loc] == 0 and loc != self._current:
            ram = self._backings[loc]
            if ram is not None:
                ram.close()
                LOG.info("migration %(mid)s: released the guest RAM of "
                         "QEMU pid %(pid)d (no page held there any more)",
                         {"mid": self.migration_id, "pid": ram.pid})

    def _release(self, bs: _BlockStore, page: int) -> None:
        """The DATA page leaves its location (copy or QEMU RAM)."""
        loc = bs.where[page]
        if loc == COPY:
            bs.copies -= 1
            self.budget.give()
        else:
            bs.remote -= 1
            self._unref(loc)
        bs.where[page] = COPY

    def _forget(self, bs: _BlockStore, page: int) -> None:
        """Drop a claim (caller keeps the counters right)."""
        st = bs.state[page]
        if st == DATA:
            self._release(bs, page)
            self._pages -= 1
        elif st == ZERO:
            self._zero_pages -= 1
        if st != ABSENT:
            bs.held -= 1
            bs.state[page] = ABSENT

    def _copy_full(self, bs: _BlockStore) -> None:
        if not self._full_logged:
            self._full_logged = True
            LOG.warning("migration %(mid)s: the agent's page copies reached "
                        "[dcmigrate_agent] copy_store_max_mib; further pages "
                        "of block %(block)s and others are not kept (a "
                        "redirect resends them)",
                        {"mid": self.migration_id, "block": bs.block.name})

    # -- pages ---------------------------------------------------------------
    def digest_of(self, data: bytes | memoryview) -> bytes:
        return xxhash.xxh3_128_digest(data, self.seed)

    def put_page(self, block: RamBlock, page: int,
                 data: bytes | memoryview, attempt: int = 0) -> bytes:
        """Record one page forwarded to QEMU (copied if its block is not
        in a held RAM); returns its digest."""
        idx = block.index
        bs = self._blocks[idx]
        d = xxhash.xxh3_128_digest(data, self.seed)
        st = bs.state[page]
        loc = bs.target
        if st == DATA:
            old = bs.where[page]
            if old != loc or loc != COPY:
                self._release(bs, page)
                st = bs.state[page] = ABSENT
                bs.held -= 1
                self._pages -= 1
        elif st == ZERO:
            self._zero_pages -= 1
            bs.held -= 1
            st = bs.state[page] = ABSENT
        if loc == COPY:
            if st == ABSENT:
                if not self.budget.take():
                    self._copy_full(bs)
                    return d
                bs.copies += 1
            off = page * PAGE_SIZE
            bs.data[off:off + PAGE_SIZE] = data
        else:
            self._refs[loc] += 1
            bs.remote += 1
            self._recent[self._recent_count % RECENT_PAGES] = \
                idx << 32 | page
            self._recent_count += 1
        if st == ABSENT:
            bs.held += 1
            self._pages += 1
        bs.where[page] = loc
        bs.state[page] = DATA
        bs.attempt[page] = attempt
        di = page * DIGEST_LEN
        bs.digests[di:di + DIGEST_LEN] = d
        return d

    def put_records(self, block: RamBlock, buf: bytearray, pos: int,
                    end: int, attempt: int = 0) -> tuple[int, int, int]:
        """Store a run of CONTINUE page/zero records of ``block`` from a
        stream reader's buffer in native code (:mod:`fastpath`); same
        effect as :meth:`put_page`/:meth:`put_zero` for each.

        A block whose arriving pages go to a held QEMU RAM: the native
        code records digest, state, attempt and location of each page
        (no copy) and stops before a page held in another location
        (:meth:`put_page` moves that one).  A block whose pages go to the
        copy area: the native code copies them, if none of the block's
        pages is in a held RAM and the copy budget has room for every
        page record the run can hold.  Otherwise nothing is consumed
        (``pos`` is returned) and the reader calls :meth:`put_page` /
        :meth:`put_zero` per record.

        :returns: (position after the run, pages, zero pages).
        """
        native = fastpath.native
        if native is None:
            return pos, 0, 0
        bs = self._blocks[block.index]
        if bs.target != COPY:
            return self._track_records(native, bs, buf, pos, end, attempt)
        if bs.remote:
            return pos, 0, 0
        # Most pages the run can add to the copies.
        bound = (end - pos) // (PAGE_SIZE + 8)
        if not self.budget.reserve(bound):
            return pos, 0, 0
        d_data = 0
        try:
            pos, pages, zeros, d_data, d_zero, d_held = \
                native.store_records(
                    buf, pos, end, block.used_length, bs.data, bs.digests,
                    bs.state, bs.attempt, attempt, self.seed,
                    self._zero_digest)
        finally:
            # Keep what the run really added (d_data < 0: it freed some).
            self.budget.give(bound - d_data)
        bs.copies += d_data
        self._pages += d_data
        self._zero_pages += d_zero
        bs.held += d_held
        return pos, pages, zeros

    def _track_records(self, native: Any, bs: _BlockStore, buf: bytearray,
                       pos: int, end: int, attempt: int
                       ) -> tuple[int, int, int]:
        """:meth:`put_records` for a block forwarded into held RAM."""
        loc = bs.target
        (pos, pages, zeros, d_data, d_zero, d_held, d_remote,
         self._recent_count) = native.track_records(
            buf, pos, end, bs.block.used_length, bs.digests, bs.state,
            bs.attempt, bs.where, self._recent, self._recent_count,
            bs.block.index, attempt, loc, self.seed, self._zero_digest)
        # The location is the current one: it cannot drop to no page.
        self._refs[loc] += d_remote
        bs.remote += d_remote
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
            self._release(bs, page)
        else:
            bs.held += 1
        self._zero_pages += 1
        bs.state[page] = ZERO
        di = page * DIGEST_LEN
        bs.digests[di:di + DIGEST_LEN] = self._zero_digest

    def reads_zero_in_qemu(self, index: int, page: int) -> bool:
        """Whether the QEMU this store feeds reads zeros at that page
        without being told: every RAM file that may hold the block (same
        size) has a hole there (never written, not even by QEMU's own
        start-up, e.g. a ROM).

        Why: a ZERO record makes QEMU check the page (``buffer_is_zero``),
        which faults a fresh page into its RAM file.  Relayed zero pages
        arrive in bursts (their records are a few bytes), and the faults
        kept the destination QEMU from reading its socket, stalling the
        source and the holders alike.  The caller must know that nothing
        it sent in this attempt wrote the page (it may not have been
        applied yet).  False when the RAM is not held (pages are copied).
        """
        bs = self._blocks[index]
        with self._lock:
            ram = self._backings[self._current]
            if ram is None or ram.closed or bs.target == COPY:
                return False
            files = ram.candidates(bs.block.used_length)
            if not files:
                return False
            offset = page * PAGE_SIZE
            for f in files:
                if not _is_hole(f.fd, offset):
                    return False
            return True

    def block_named(self, name: str) -> RamBlock:
        return self._by_name[name].block

    def block_at(self, index: int) -> RamBlock:
        return self._blocks[index].block

    def _data_of(self, idx: int, page: int) -> bytes | memoryview:
        bs = self._blocks[idx]
        loc = bs.where[page]
        if loc == COPY:
            off = page * PAGE_SIZE
            return memoryview(bs.data)[off:off + PAGE_SIZE]
        f = self._files.get((loc, idx))
        if f is None and (loc, idx) not in self._files:
            ram = self._backings[loc]
            cands = ram.candidates(bs.block.used_length) if ram else []
            f = cands[0] if len(cands) == 1 else None
        data = self._read(f, page)
        if data is None:
            raise exception.HeldPageChanged(
                migration_id=self.migration_id, block=bs.block.name,
                page=page)
        return data

    def page_at(self, index: int, page: int) -> bytes | memoryview | None:
        """Page content by block index; None for a zero page.

        A page read back from a held QEMU RAM is checked against the
        digest announced for it.

        :raises HeldPageChanged: it no longer matches (or cannot be read).
        """
        bs = self._blocks[index]
        if bs.state[page] != DATA:
            return None
        data = self._data_of(index, page)
        if bs.where[page] != COPY:
            di = page * DIGEST_LEN
            if xxhash.xxh3_128_digest(data, self.seed) != \
                    bs.digests[di:di + DIGEST_LEN]:
                raise exception.HeldPageChanged(
                    migration_id=self.migration_id, block=bs.block.name,
                    page=page)
        return data

    def state_at(self, index: int, page: int) -> int:
        return self._blocks[index].state[page]

    def inventory_ranges(self, max_count: int = 4096  # wire.SEND_RANGE
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
        return bytes(self.page_at(bs.block.index, page))  # type: ignore

    def inventory(self) -> Iterator[tuple[str, int, bytes]]:
        """Yield (block name, page, digest) for every held page."""
        for bs in self._blocks:
            name, st, dg = bs.block.name, bs.state, bs.digests
            for page in range(len(st)):
                if st[page]:
                    di = page * DIGEST_LEN
                    yield name, page, bytes(dg[di:di + DIGEST_LEN])

    def counters(self) -> StoreCounters:
        copies = sum(bs.copies for bs in self._blocks)
        return StoreCounters(self._pages, self._zero_pages,
                             (self._pages + self._zero_pages) * PAGE_SIZE,
                             copies * PAGE_SIZE, self.backing_bytes())

    def backing_bytes(self) -> int:
        """Memory of the QEMU RAM files this store holds open."""
        return sum(r.held_bytes() for r in self._backings if r is not None)

    def backing_pids(self) -> list[int]:
        return [r.pid for r in self._backings
                if r is not None and not r.closed]

    def _close_blocks(self) -> None:
        for bs in self._blocks:
            if bs.copies:
                self.budget.give(bs.copies)
                bs.copies = 0
            bs.close()
        self._blocks = []
        self._by_name = {}
        for ram in self._backings:
            if ram is not None:
                ram.close()
        self._backings = [None]
        self._refs = [0]
        self._current = COPY
        self._files = {}
        self._recent_count = 0

    def drop_backings(self) -> None:
        """Forget the pages in held QEMU RAMs and close those (the
        migration completed: the guest runs on that RAM)."""
        with self._lock:
            for bs in self._blocks:
                for page in range(len(bs.state)):
                    if bs.state[page] == DATA and bs.where[page] != COPY:
                        self._forget(bs, page)
            for ram in self._backings:
                if ram is not None:
                    ram.close()
            self._current = COPY
            self._retarget()
            self._recent_count = 0

    def close(self) -> None:
        """Drop every page: the copies and the held QEMU RAMs."""
        with self._lock:
            self._close_blocks()
            self.ram_start = None


def _is_hole(fd: int, offset: int) -> bool:
    """The page at ``offset`` of file ``fd`` was never written (reads
    zero); False when unknown."""
    try:
        return os.lseek(fd, offset, os.SEEK_DATA) >= offset + PAGE_SIZE
    except OSError as err:
        # ENXIO: no data from ``offset`` to the end of the file.
        return err.errno == errno.ENXIO
