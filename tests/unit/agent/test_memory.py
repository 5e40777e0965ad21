"""Page store memory: held QEMU RAM instead of copies, the copy cap, the
RAM layout bound and store expiry.

The "QEMU RAM" here is a real memfd that the test maps shared and writes
into, as QEMU writes the pages it loads; the store reads it back through
its own read-only descriptor, as an agent does through /proc/<pid>/fd.
"""

from __future__ import annotations

import mmap
import os
import time

import pytest
import xxhash

from nova_dcmigrate.agent import exception
from nova_dcmigrate.agent.page_store import ABSENT
from nova_dcmigrate.agent.page_store import CopyBudget
from nova_dcmigrate.agent.page_store import DATA
from nova_dcmigrate.agent.page_store import PageStore
from nova_dcmigrate.agent.page_store import ZERO
from nova_dcmigrate.agent import ram_backing
from nova_dcmigrate.agent.session import SessionState
from nova_dcmigrate.stream import RamBlock
from nova_dcmigrate.stream import RamStart
from tests.unit.agent.harness import AgentPair
from tests.unit.agent.harness import FakeDestQemu
from tests.unit.agent.harness import FakeSourceQemu
from tests.unit.stream import streamgen

PS = 4096
RAM = RamBlock(0, "pc.ram", 64 * PS)
BIOS = RamBlock(1, "pc.bios", 4 * PS)


def _start(blocks=(RAM, BIOS)) -> RamStart:
    return RamStart(section_id=2, instance_id=0, version_id=4,
                    total_bytes=sum(b.used_length for b in blocks),
                    blocks=tuple(blocks), ignore_shared=False, raw=b"")


class FakeQemuRam:
    """A memfd the test writes like QEMU does, and the agent's view."""

    def __init__(self, size: int = RAM.used_length) -> None:
        self.fd = os.memfd_create("memory-backend-memfd")
        os.ftruncate(self.fd, size)
        self.map = mmap.mmap(self.fd, size, mmap.MAP_SHARED)
        ro = os.open("/proc/self/fd/%d" % self.fd, os.O_RDONLY)
        self.ram = ram_backing.QemuRam(
            os.getpid(), [ram_backing.RamFile(ro, size, "memfd")])

    def write(self, page: int, data: bytes) -> None:
        self.map[page * PS:(page + 1) * PS] = data

    def exit(self) -> None:
        """QEMU is gone: its mapping and descriptor too."""
        self.map.close()
        os.close(self.fd)


def _page(n: int) -> bytes:
    return bytes([n % 251 + 1]) * PS


@pytest.fixture
def qram():
    q = FakeQemuRam()
    yield q
    if not q.map.closed:
        q.exit()
    q.ram.close()


def test_held_ram_pages_are_not_copied_and_survive_qemu(qram):
    store = PageStore(seed=5)
    store.configure(_start())
    assert store.attach(qram.ram)
    for p in range(40):
        store.put_page(RAM, p, _page(p))
        qram.write(p, _page(p))            # QEMU applies it
    store.put_page(BIOS, 1, _page(99))       # no file of that size: copied
    c = store.counters()
    assert c.pages == 41 and c.copied_bytes == PS
    qram.exit()
    store.settle()
    for p in range(40):
        assert bytes(store.page_at(0, p)) == _page(p)
    assert bytes(store.page_at(1, 1)) == _page(99)
    assert store.counters().backing_bytes >= 40 * PS
    store.close()
    assert qram.ram.closed


def test_settle_keeps_what_qemu_applied(qram):
    """The stream's last pages may not have reached QEMU before it was
    killed: the store announces the content QEMU really has."""
    store = PageStore(seed=5)
    store.configure(_start())
    store.attach(qram.ram)
    store.put_page(RAM, 3, _page(1))
    qram.write(3, _page(1))
    store.put_page(RAM, 3, _page(2))         # in flight, never applied
    store.put_page(RAM, 4, _page(4))         # never applied: QEMU has zero
    store.settle()
    assert store.digest("pc.ram", 3) == xxhash.xxh3_128_digest(_page(1), 5)
    assert bytes(store.page_at(0, 3)) == _page(1)
    assert store.state("pc.ram", 4) == ZERO
    assert store.corrected_pages == 2


def test_changed_page_is_never_relayed(qram):
    store = PageStore(seed=5)
    store.configure(_start())
    store.attach(qram.ram)
    for p in range(20):
        store.put_page(RAM, p, _page(p))
        qram.write(p, _page(p))
    store.settle()
    qram.write(7, _page(200))                # not what was announced
    with pytest.raises(exception.HeldPageChanged):
        store.page_at(0, 7)


def test_new_attempt_releases_ram_nothing_points_to(qram):
    """A resume to the same host: once every page is superseded by the
    new QEMU's, the old QEMU's RAM is released."""
    store = PageStore(seed=5)
    store.configure(_start())
    store.attach(qram.ram)
    for p in range(4):
        store.put_page(RAM, p, _page(p))
        qram.write(p, _page(p))
    store.begin_attempt()
    second = FakeQemuRam()
    try:
        store.attach(second.ram)
        for p in range(4):
            store.put_page(RAM, p, _page(p + 10))
            second.write(p, _page(p + 10))
        assert qram.ram.closed and not second.ram.closed
        store.settle()
        assert bytes(store.page_at(0, 2)) == _page(12)
        store.drop_backings()
        assert second.ram.closed
        assert store.state("pc.ram", 2) == ABSENT
    finally:
        second.exit()


def test_copy_budget_caps_copies_and_drops_claims():
    budget = CopyBudget(3 * PS)
    a, b = PageStore(seed=1, budget=budget), PageStore(seed=1, budget=budget)
    a.configure(_start())
    b.configure(_start())
    for p in range(2):
        a.put_page(RAM, p, _page(p))
    b.put_page(RAM, 0, _page(7))
    b.put_page(RAM, 1, _page(8))              # over the cap: not kept
    assert budget.used == 3
    assert b.state("pc.ram", 1) == ABSENT
    a.put_page(RAM, 0, _page(9))              # overwrite in place: free
    assert a.state("pc.ram", 0) == DATA and budget.used == 3
    a.put_zero(RAM, 1)                        # a zero page needs no copy
    assert budget.used == 2
    a.close()
    b.close()
    assert budget.used == 0


def test_layout_over_the_domain_memory_refused_before_allocating():
    store = PageStore(seed=1, ram_limit=64 * PS + 4 * PS)
    store.configure(_start())                 # exactly at the limit
    huge = RamBlock(0, "pc.ram", 1 << 40)
    with pytest.raises(exception.RamLayoutTooLarge) as err:
        store.configure(_start((huge,)))
    assert err.value.kwargs["announced"] == 1 << 40
    assert store.ram_start.blocks[0].used_length == 64 * PS


def test_malicious_stream_refused_by_destination_agent():
    """A stream announcing 4 GiB for a 64 MiB domain fails the attempt
    with a precise error; the destination sizes nothing from it."""
    pair = AgentPair(chunk_size=16384, socket_buffer=65536,
                     ram_overhead_mib=0)
    try:
        blocks = {"pc.ram": 4 << 30, "pc.bios": 256 * 1024}
        s = streamgen.build_stream(
            blocks, [("pc.ram", 0, b"x" * PS), ("pc.ram", 5, None)])
        d = pair.dst.prepare_destination(None, pair.migration_id,
                                         pair.secret, attempt=0,
                                         guest_memory=64 << 20)
        FakeDestQemu().listen(d["socket"])
        src = pair.src.prepare_source(None, pair.migration_id, pair.secret,
                                      "127.0.0.1", pair.dst.listener.port,
                                      0)
        FakeSourceQemu(src["socket"], s.data).start()
        dst = pair.session("dst")
        deadline = time.monotonic() + 10
        while dst.state not in (SessionState.FAILED, SessionState.COMPLETED) \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        assert dst.state == SessionState.FAILED
        assert "announces RAM blocks of %d bytes" % (s.ram_start.total_bytes)\
            in dst.error
        assert "more than the %d bytes" % (64 << 20) in dst.error
        assert not pair.dst.stores[pair.migration_id].configured
        with pytest.raises(exception.InvalidRequest):
            pair.dst.prepare_destination(None, pair.migration_id,
                                         pair.secret, attempt=1,
                                         guest_memory=-1)
    finally:
        pair.stop()


def _migrate_and_leave(pair: AgentPair) -> None:
    s = streamgen.build_stream(writes=[("pc.ram", p, _page(p))
                                       for p in range(50)])
    path = pair.prepare(FakeDestQemu())
    # The pause before the cut lets the destination store what it got:
    # the cut resets the agents' connection, which may drop unread data.
    FakeSourceQemu(path, s.data, stop_after=len(s.data) - 200,
                   pause=(len(s.data) - 300, 2.0)).start()
    dst = pair.session("dst")
    # The controller vanishes: it never aborts nor cleans up.  The source
    # QEMU's side ends (as libvirt's job would), the sessions fail.
    deadline = time.monotonic() + 10
    while dst.state not in (SessionState.FAILED, SessionState.COMPLETED):
        assert time.monotonic() < deadline, dst.state
        time.sleep(0.02)


def test_expiry_drops_an_unused_store():
    pair = AgentPair(chunk_size=16384, socket_buffer=65536,
                     store_expiry=100)
    try:
        _migrate_and_leave(pair)
        store = pair.dst.stores[pair.migration_id]
        assert store.counters().pages >= 40
        now = time.monotonic()
        assert pair.dst.expire_idle(now + 50) == []      # not yet
        assert pair.dst.expire_idle(now + 101) == [pair.migration_id]
        assert pair.migration_id not in pair.dst.stores
        assert store.ram_start is None                   # closed
        with pytest.raises(exception.UnknownMigration):
            pair.dst.get_status(None, pair.migration_id)
        assert pair.dst.copy_budget.used == 0
    finally:
        pair.stop()


def test_busy_migration_does_not_expire():
    pair = AgentPair(chunk_size=16384, socket_buffer=65536, store_expiry=1)
    try:
        pair.prepare(FakeDestQemu())
        now = time.monotonic()
        # Prepared sessions wait for their connections: in use.
        assert pair.dst.expire_idle(now + 10) == []
        assert pair.migration_id in pair.dst.stores
    finally:
        pair.stop()


def test_agent_whose_controller_vanished_releases_its_store():
    """No cleanup call ever comes: the agent's own expiry thread drops
    the store (and what it holds) after store_expiry."""
    pair = AgentPair(chunk_size=16384, socket_buffer=65536, store_expiry=1)
    try:
        _migrate_and_leave(pair)
        assert pair.migration_id in pair.dst.stores
        deadline = time.monotonic() + 10
        while pair.migration_id in pair.dst.stores or \
                pair.migration_id in pair.src.secrets:
            assert time.monotonic() < deadline, "store not expired"
            time.sleep(0.1)
        assert pair.dst.copy_budget.used == 0
        assert not pair.dst.sessions and not pair.src.sessions
    finally:
        pair.stop()


def _feed_store(store: PageStore, writes) -> None:
    """A stream through the destination's store visitor, as an agent
    forwards it (runs the native per-page code when it is on)."""
    from nova_dcmigrate.agent.destination import StoreVisitor
    from nova_dcmigrate.stream import StreamReader

    s = streamgen.build_stream({"pc.ram": RAM.used_length,
                                "pc.bios": BIOS.used_length}, writes,
                               records_per_section=64)
    reader = StreamReader(StoreVisitor(store))
    streamgen.feed_chunks(reader, s.data, [len(s.data)])


def test_stream_into_held_ram_keeps_locations(qram):
    """Pages arriving for a held RAM are recorded per page (location,
    reference, recent) on either per-page path, never copied."""
    store = PageStore(seed=5)
    store.begin_attempt()
    writes = [("pc.ram", p, _page(p)) for p in range(30)] + \
        [("pc.ram", 31, None), ("pc.bios", 2, _page(77))]
    store.configure(_start())
    assert store.attach(qram.ram)
    _feed_store(store, writes)
    for p in range(30):
        qram.write(p, _page(p))
    c = store.counters()
    assert c.pages == 31 and c.zero_pages == 1
    assert c.copied_bytes == PS              # only the BIOS page
    store.settle()
    assert store.corrected_pages == 0
    assert bytes(store.page_at(0, 29)) == _page(29)
    assert bytes(store.page_at(1, 2)) == _page(77)
    store.close()
    assert qram.ram.closed


def test_stream_copies_respect_the_budget():
    """The copy cap holds on either per-page path: a run of records that
    could exceed it is stored page by page, and claims beyond it are
    dropped."""
    budget = CopyBudget(10 * PS)
    store = PageStore(seed=5, budget=budget)
    writes = [("pc.ram", p, _page(p)) for p in range(25)] + \
        [("pc.ram", p, None) for p in range(3)]
    _feed_store(store, writes)
    c = store.counters()
    assert budget.used == 10 - 3 and c.copied_bytes == 7 * PS
    assert c.pages == 7 and c.zero_pages == 3
    assert store.state("pc.ram", 20) == ABSENT
    assert store.page("pc.ram", 5) == _page(5)
    store.close()
    assert budget.used == 0


def test_stream_copies_unlimited_budget_counts_copies():
    budget = CopyBudget(None)
    store = PageStore(seed=5, budget=budget)
    writes = [("pc.ram", p, _page(p)) for p in range(20)] + \
        [("pc.ram", p, None) for p in range(5)] + \
        [("pc.ram", 2, _page(50))]
    _feed_store(store, writes)
    _feed_store(store, writes)               # a second attempt, same pages
    c = store.counters()
    assert c.pages == 16 and c.zero_pages == 4
    assert budget.used == 16 and c.copied_bytes == 16 * PS
    assert store.page("pc.ram", 2) == _page(50)
    assert store.page("pc.ram", 3) == bytes(PS)
    store.close()
    assert budget.used == 0


def test_reads_zero_in_qemu_only_where_its_ram_has_a_hole(qram):
    store = PageStore(seed=5)
    store.configure(_start())
    assert not store.reads_zero_in_qemu(0, 5)        # RAM not held yet
    assert store.attach(qram.ram)
    qram.write(3, _page(3))
    qram.write(7, bytes(PS))          # written, even with zeros: not a hole
    assert store.reads_zero_in_qemu(0, 5)
    assert store.reads_zero_in_qemu(0, RAM.used_length // PS - 1)
    assert not store.reads_zero_in_qemu(0, 3)
    assert not store.reads_zero_in_qemu(0, 7)
    # No RAM file of the BIOS block's size: its pages are copied, and
    # QEMU may have loaded a ROM there.
    assert not store.reads_zero_in_qemu(1, 0)
    store.close()


def test_reads_zero_in_qemu_needs_a_hole_in_every_candidate_file():
    # Two RAM files of the block's size: the block is one of them, so
    # the page is known zero only if both have a hole there.
    a, b = FakeQemuRam(), FakeQemuRam()
    try:
        b.write(9, _page(9))
        both = ram_backing.QemuRam(os.getpid(), a.ram.files + b.ram.files)
        store = PageStore(seed=5)
        store.configure(_start())
        assert store.attach(both)
        assert store.reads_zero_in_qemu(0, 8)
        assert not store.reads_zero_in_qemu(0, 9)
        store.close()
    finally:
        for q in (a, b):
            q.exit()
            q.ram.close()


def test_relayed_zero_pages_get_no_record_where_qemu_reads_zero(qram):
    import socket

    from nova_dcmigrate.agent import merge

    store = PageStore(seed=5)
    start = _start()
    store.configure(start)
    assert store.attach(qram.ram)
    qram.write(2, _page(2))           # e.g. a ROM QEMU loaded at start
    ours, qemu = socket.socketpair()
    try:
        feed = merge.QemuFeed(ours, store, attempt=1)
        feed.configure(start)
        feed.writer.ram_start(start)   # as the source's stream does
        qemu.settimeout(5)
        injected, dropped = feed.inject([(0, 1, None), (0, 2, None),
                                         (0, 4, _page(4)), (0, 5, None)])
        assert (injected, dropped) == (4, 0)
        assert feed.zero_records_elided == 2          # pages 1 and 5
        assert feed.relay_pages_injected == 4
        assert store.state("pc.ram", 1) == ZERO
        assert store.state("pc.ram", 2) == ZERO
        sent = qemu.recv(1 << 20)
        # One PART section with a ZERO record for page 2 and page 4's
        # data; nothing for pages 1 and 5.
        assert _page(4) in sent
        assert len(sent) < 2 * PS
        # A second relay of the same pages is dropped as before.
        assert feed.inject([(0, 1, None), (0, 5, None)]) == (0, 2)
    finally:
        ours.close()
        qemu.close()
        store.close()
