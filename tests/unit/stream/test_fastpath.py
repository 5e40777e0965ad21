"""Native per-page code and pure Python give identical results.

``fastpath`` chooses the C extension or the pure-Python code; the agents
must not behave differently either way.  Property tests run the same
generated streams (any chunking, invalid ones too) through both and compare
what every hot-path visitor produced: the parse itself (counters, errors),
the source's digest table, the destination's page store, and the bytes the
source's filter of a redirected attempt re-encodes.
"""

from __future__ import annotations

import os
import random
import struct
import types
from typing import Any

import hypothesis
from hypothesis import strategies as st
import pytest
import xxhash

from nova_dcmigrate.agent import plan as planmod
from nova_dcmigrate.agent.destination import StoreVisitor
from nova_dcmigrate.agent import merge
from nova_dcmigrate.agent.layout import Layout
from nova_dcmigrate.agent.page_store import DIGEST_LEN
from nova_dcmigrate.agent.page_store import PageStore
from nova_dcmigrate.agent.page_store import zero_digest
from nova_dcmigrate.agent.source import SourceSession
from nova_dcmigrate.agent.source import SourceTracker
from nova_dcmigrate.agent.source_filter import SourceFilter
from nova_dcmigrate.stream import constants as c
from nova_dcmigrate.stream import fastpath
from nova_dcmigrate.stream import StreamReader
from nova_dcmigrate.stream import StreamVisitor
from tests.unit.stream import streamgen
from tests.unit.stream.test_properties import chunk_sizes
from tests.unit.stream.test_properties import stream_specs

pytestmark = pytest.mark.skipif(
    not fastpath.available(),
    reason="native extension not built: %s" % fastpath.reason)

SETTINGS = hypothesis.settings(
    max_examples=60, deadline=None, database=None,
    suppress_health_check=[hypothesis.HealthCheck.too_slow,
                           hypothesis.HealthCheck.data_too_large])
SEED = 0x5EED


def _feed(reader: StreamReader, data: bytes, chunks: list[int]
          ) -> BaseException | None:
    try:
        streamgen.feed_chunks(reader, data, chunks)
    except Exception as err:  # compared across both paths
        return err
    return None


def _err(err: BaseException | None) -> Any:
    return None if err is None else (type(err), str(err))


def _both(run: Any) -> tuple[Any, Any]:
    with fastpath.forced(True):
        native = run()
    with fastpath.forced(False):
        python = run()
    return native, python


def test_native_is_used_when_forced() -> None:
    with fastpath.forced(True):
        assert SourceTracker(None, 1).fast_records is not None
        assert fastpath.enabled()
    with fastpath.forced(False):
        assert SourceTracker(None, 1).fast_records is None
        assert not fastpath.enabled()


def test_native_digest_is_python_xxhash_digest() -> None:
    data = bytearray(os.urandom(4096))
    word = struct.pack(">Q", 5 << 12 | c.RAM_FLAG_PAGE | c.RAM_FLAG_CONTINUE)
    buf = bytearray(word + data)
    table = bytearray(16 * DIGEST_LEN)
    native = fastpath._available
    assert native is not None
    pos, pages, zeros = native.digest_records(buf, 0, len(buf), 16 * 4096,
                                              table, 77, bytes(16))
    assert (pos, pages, zeros) == (len(buf), 1, 0)
    assert bytes(table[5 * 16:6 * 16]) == xxhash.xxh3_128_digest(data, 77)


class TestParse:

    @SETTINGS
    @hypothesis.given(stream_specs(), chunk_sizes, st.integers(0, 2 ** 16))
    def test_parse_and_errors_identical(self, spec: dict[str, object],
                                        chunks: list[int],
                                        cut: int) -> None:
        data = streamgen.build_stream(**spec).data  # type: ignore[arg-type]
        rng = random.Random(cut)
        # Valid, truncated and corrupted variants.
        variants = [data, data[:cut % (len(data) + 1)]]
        bad = bytearray(data)
        for _ in range(3):
            bad[rng.randrange(len(bad))] = rng.randrange(256)
        variants.append(bytes(bad))
        for v in variants:
            def run() -> Any:
                reader = StreamReader(StreamVisitor())
                err = _feed(reader, v, chunks)
                return (reader.pages, reader.zero_pages, reader.sections,
                        reader.offset, _err(err))
            native, python = _both(run)
            assert native == python


class TestTrackerAndStore:

    @SETTINGS
    @hypothesis.given(stream_specs(), chunk_sizes)
    def test_digest_table_identical(self, spec: dict[str, object],
                                    chunks: list[int]) -> None:
        data = streamgen.build_stream(**spec).data  # type: ignore[arg-type]

        def run() -> Any:
            tracker = SourceTracker(None, SEED)  # type: ignore
            err = _feed(StreamReader(tracker), data, chunks)
            return [bytes(d) for d in tracker.digests], _err(err)
        native, python = _both(run)
        assert native == python

    @SETTINGS
    @hypothesis.given(stream_specs(), chunk_sizes, st.integers(0, 3))
    def test_page_store_identical(self, spec: dict[str, object],
                                  chunks: list[int], rounds: int) -> None:
        stream = streamgen.build_stream(**spec)  # type: ignore[arg-type]

        def run() -> Any:
            store = PageStore(SEED)
            try:
                # A second attempt into the same store (state changes).
                for _ in range(1 + rounds % 2):
                    err = _feed(StreamReader(StoreVisitor(store)),
                                stream.data, chunks)
                blocks = store._blocks
                # The pages held (the copy area's other bytes are not
                # part of the store's content).
                return ([(_held_pages(b), bytes(b.digests), bytes(b.state),
                          b.attempt.tobytes(), b.held, bytes(b.where),
                          b.copies) for b in blocks],
                        store.counters(), _err(err))
            finally:
                store.close()
        native, python = _both(run)
        assert native == python
        # And it is the stream's memory.
        store_final = native[0]
        names = list(stream.ram_start.blocks)
        for blk in names:
            for page, content in stream.final.get(blk.name, {}).items():
                got = store_final[blk.index][0].get(page, bytes(4096))
                assert got == (content or bytes(4096))

    @SETTINGS
    @hypothesis.given(stream_specs(), chunk_sizes, st.integers(0, 3))
    def test_page_store_in_held_ram_identical(self, spec: dict[str, object],
                                              chunks: list[int],
                                              mode: int) -> None:
        """Pages forwarded into a held QEMU RAM (memfd backing) are
        recorded identically: digests, states, attempts, locations,
        references, the recent-pages ring, counters.  mode bit 0: the
        store first got a copy attempt; bit 1: a second held RAM (the
        next attempt's QEMU) takes over, so pages move between
        locations."""
        stream = streamgen.build_stream(**spec)  # type: ignore[arg-type]
        sizes = sorted({b.used_length for b in stream.ram_start.blocks})

        def run() -> Any:
            store = PageStore(SEED)
            rams = []
            try:
                if mode & 1:
                    err = _feed(StreamReader(StoreVisitor(store)),
                                stream.data, chunks)
                for _ in range(1 + (mode >> 1)):
                    rams.append(_memfd_ram(sizes))
                    if store.configured:
                        assert store.attach(rams[-1])
                    else:
                        # Attach once the layout is known (as an agent
                        # does before the stream's RAM_START).
                        store.configure(stream.ram_start)
                        assert store.attach(rams[-1])
                    err = _feed(StreamReader(StoreVisitor(store)),
                                stream.data, chunks)
                blocks = store._blocks
                return ([(_held_pages(b), bytes(b.digests), bytes(b.state),
                          b.attempt.tobytes(), b.held, bytes(b.where),
                          b.copies, b.remote) for b in blocks],
                        list(store._refs), sorted(store._take_recent()),
                        [r.closed for r in rams], store.counters(),
                        _err(err))
            finally:
                store.close()
                for r in rams:
                    r.close()
        native, python = _both(run)
        assert native == python

    @SETTINGS
    @hypothesis.given(stream_specs(), chunk_sizes, st.integers(0, 3),
                      st.randoms(use_true_random=False))
    def test_merged_stream_identical(self, spec: dict[str, object],
                                     chunks: list[int], mode: int,
                                     rnd: random.Random) -> None:
        """A redirect's new destination (``merge.MergeVisitor``): the
        bytes written to QEMU, the page store, the "sent by the source"
        marks and the superseded holder pages are the same either way.
        mode bit 0: the store holds a QEMU RAM (memfd) instead of copying;
        bit 1: some pages are assigned to remote holders, some of them
        already relayed."""
        stream = streamgen.build_stream(**spec)  # type: ignore[arg-type]
        sizes = sorted({b.used_length for b in stream.ram_start.blocks})
        total = sum(b.used_length // 4096 for b in stream.ram_start.blocks)
        owner = [rnd.choice((-1, 0, 1, 2)) if mode & 2 else -1
                 for _ in range(total)]
        relayed = [rnd.random() < 0.3 for _ in range(total)]

        def run() -> Any:
            store = PageStore(SEED)
            qemu = _Sink()
            ram = None
            try:
                feed = merge.QemuFeed(qemu, store, 3)  # type: ignore
                if mode & 1:
                    ram = _memfd_ram(sizes)
                    store.configure(stream.ram_start)
                    assert store.attach(ram)

                def on_start(start: Any) -> None:
                    feed.owner = owner if mode & 2 else ()
                    for g, r in enumerate(relayed):
                        feed.relayed[g] = r

                visitor = merge.MergeVisitor(feed, on_start, lambda: None)
                err = _feed_merge(StreamReader(visitor), visitor,
                                  stream.data, chunks)
                blocks = store._blocks
                return (bytes(qemu.data), bytes(feed.sent_by_src),
                        list(feed.superseded),
                        [(_held_pages(b), bytes(b.digests), bytes(b.state),
                          b.attempt.tobytes(), b.held, bytes(b.where))
                         for b in blocks], store.counters(), _err(err))
            finally:
                store.close()
                if ram is not None:
                    ram.close()
        native, python = _both(run)
        assert native == python
        if native[-1] is None:
            # And QEMU gets the stream's memory.
            out = _StoreAll()
            streamgen.feed_chunks(StreamReader(out), native[0])
            for blk in stream.ram_start.blocks:
                for page, content in stream.final.get(blk.name, {}).items():
                    assert out.pages.get((blk.name, page)) == \
                        (content or bytes(4096))


class _Sink:
    """Stands in for the destination QEMU's socket (QemuFeed only calls
    sendall): collects what the feed writes."""

    def __init__(self) -> None:
        self.data = bytearray()

    def sendall(self, data: bytes) -> None:
        self.data += data


class _StoreAll(StreamVisitor):
    def __init__(self) -> None:
        self.pages: dict[tuple[str, int], bytes] = {}

    def on_page(self, block: Any, page: int, data: memoryview) -> None:
        self.pages[(block.name, page)] = bytes(data)

    def on_zero(self, block: Any, page: int) -> None:
        self.pages[(block.name, page)] = bytes(4096)


def _feed_merge(reader: StreamReader, visitor: Any, data: bytes,
                chunks: list[int]) -> BaseException | None:
    """As the new destination's session feeds the source's stream: each
    chunk under the feed lock (``chunk_begin``/``chunk_end``)."""
    sizes = [max(1, s) for s in chunks] or [1]
    pos = i = 0
    try:
        while pos < len(data):
            n = min(sizes[i % len(sizes)], len(data) - pos)
            i += 1
            view = reader.get_buffer(n)
            view[:n] = data[pos:pos + n]
            visitor.chunk_begin()
            try:
                reader.buffer_updated(n)
            finally:
                visitor.chunk_end()
            pos += n
        reader.close()
    except Exception as err:  # compared across both paths
        return err
    return None


def _memfd_ram(sizes: list[int]) -> Any:
    """A QEMU's shared RAM files (memfds of the blocks' sizes)."""
    from nova_dcmigrate.agent import ram_backing
    files = []
    for size in sizes:
        fd = os.memfd_create("memory-backend-memfd")
        os.ftruncate(fd, size)
        files.append(ram_backing.RamFile(fd, size, "memfd"))
    return ram_backing.QemuRam(os.getpid(), files)


def _held_pages(bs: Any) -> dict[int, bytes]:
    """Content of a block store's DATA pages, by page."""
    return {p: bytes(bs.data[p * 4096:(p + 1) * 4096])
            for p in range(len(bs.state)) if bs.state[p] == 2}


POOL = [bytes([i]) * 4096 for i in range(1, 5)]


@st.composite
def redirect_cases(draw: st.DrawFn) -> dict[str, Any]:
    """A stream whose pages repeat a few contents, and a redirect plan
    (flags, expected digests, frontier, kept-page budget) over it."""
    blocks = {"pc.ram": draw(st.integers(1, 48)) * 4096,
              "pc.bios": draw(st.integers(1, 8)) * 4096}
    names = list(blocks)
    writes = []
    for b, page, content in draw(st.lists(st.tuples(
            st.integers(0, 1), st.integers(0, 10 ** 4),
            st.integers(-1, len(POOL) - 1)), max_size=120)):
        name = names[b]
        writes.append((name, page % (blocks[name] // 4096),
                       None if content < 0 else POOL[content]))
    npages = sum(n // 4096 for n in blocks.values())
    return dict(
        blocks=blocks, writes=writes,
        records_per_section=draw(st.integers(1, 30)),
        use_continue=draw(st.booleans()),
        flags=draw(st.lists(st.sampled_from(
            [planmod.FLAG_NONE, planmod.FLAG_LOCAL, planmod.FLAG_REMOTE]),
            min_size=npages, max_size=npages)),
        expected=draw(st.lists(st.integers(-1, len(POOL) - 1),
                               min_size=npages, max_size=npages)),
        frontier=draw(st.integers(0, npages)),
        budget=draw(st.integers(0, 6)),
        lower_frontier_at=draw(st.integers(0, 200)),
        chunks=draw(chunk_sizes))


def _filter_run(case: dict[str, Any]) -> Any:
    stream = streamgen.build_stream(
        case["blocks"], case["writes"],
        records_per_section=case["records_per_section"],
        use_continue=case["use_continue"])
    layout = Layout.from_start(stream.ram_start)
    conf = types.SimpleNamespace(assist_buffer_mib=0,
                                 socket_dir="/run/dcmigrate-unused")
    s = SourceSession(conf, "00000000-0000-0000-0000-000000000001",
                      "secret", 1, 0, "127.0.0.1", 0)
    try:
        s.assist_budget = case["budget"]
        s.frontier = case["frontier"]
        flags, expected = [], []
        g = 0
        for n in layout.npages:
            fl = bytearray(n)
            ex = bytearray(n * DIGEST_LEN)
            for p in range(n):
                fl[p] = case["flags"][g]
                e = case["expected"][g]
                ex[p * DIGEST_LEN:(p + 1) * DIGEST_LEN] = \
                    xxhash.xxh3_128_digest(POOL[e], SEED) if e >= 0 \
                    else zero_digest(SEED)
                g += 1
            flags.append(fl)
            expected.append(ex)
        f = SourceFilter(s, layout, flags, expected, SEED)
        reader = StreamReader(f)
        out = bytearray()
        data = stream.data
        pos = i = 0
        sizes = [max(1, n) for n in case["chunks"]]
        while pos < len(data):
            n = min(sizes[i % len(sizes)], len(data) - pos)
            i += 1
            view = reader.get_buffer(n)
            view[:n] = data[pos:pos + n]
            reader.buffer_updated(n)
            out += f.w.take()
            if i == case["lower_frontier_at"]:
                s.frontier = 0      # a lowered frontier between chunks
            pos += n
        reader.close()
        return (bytes(out), [bytes(x) for x in flags],
                [bytes(x) for x in expected], f.dropped, f.dropped_bytes,
                f.forwarded_held, f.ncovered, f.position, f.pass1_done,
                sorted(s.assist.items()), s.lowest_skip,
                s.counters.get("assist_pages_kept"), reader.pages,
                reader.zero_pages)
    finally:
        s._close_all()


class TestSourceFilter:

    @SETTINGS
    @hypothesis.given(redirect_cases())
    def test_filtered_stream_identical(self, case: dict[str, Any]) -> None:
        native, python = _both(lambda: _filter_run(case))
        assert native == python
        # The filtered stream is a valid stream.
        streamgen.decode(native[0])
