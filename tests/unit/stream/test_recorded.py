"""The codec on streams recorded from real QEMU 10.0.2 migrations.

See ``data/README`` and ``tools/record_stream.py`` for how they were made.
"""

from __future__ import annotations

import collections
import gzip
import hashlib
import json
import os
import random
import struct

import testtools

from nova_dcmigrate.stream import constants as c
from nova_dcmigrate.stream import exception
from nova_dcmigrate.stream import records
from nova_dcmigrate.stream import ReaderState
from nova_dcmigrate.stream import StreamReader
from tests.unit.stream import streamgen

DATA = os.path.join(os.path.dirname(__file__), "data")
BLOCKS = [("pc.ram", 0x2000000), ("/rom@etc/acpi/tables", 0x20000),
          ("pc.bios", 0x40000), ("pc.rom", 0x20000),
          ("/rom@etc/table-loader", 0x1000), ("/rom@etc/acpi/rsdp", 0x1000)]


def load(name: str) -> tuple[bytes, dict[str, object]]:
    with gzip.open(os.path.join(DATA, name + ".gz")) as f:
        data = f.read()
    with open(os.path.join(DATA, name + ".json")) as f:
        meta = json.load(f)
    return data, meta


def payload_pages(meta: dict) -> list[bytes]:
    """Rebuild the loader payload exactly as tools/record_stream.py does."""
    spec = meta["payload"]
    rng = random.Random(spec["seed"])
    return [rng.randbytes(spec["unit"]) * (c.PAGE_SIZE // spec["unit"])
            for _ in range(spec["size"] // c.PAGE_SIZE)]


class CountingVisitor(streamgen.MemoryVisitor):
    """MemoryVisitor that also counts writes per page and PAGE records."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: collections.Counter[tuple[str, int]] = (
            collections.Counter())
        self.page_events = 0

    def on_page(self, block: records.RamBlock, page: int,
                data: memoryview) -> None:
        super().on_page(block, page, data)
        self.writes[block.name, page] += 1
        self.page_events += 1

    def on_zero(self, block: records.RamBlock, page: int) -> None:
        super().on_zero(block, page)
        self.writes[block.name, page] += 1


class RecordedStreamMixin:
    name = ""
    machine = "pc-i440fx-10.0"
    switchover_start = True

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        self.data, self.meta = load(self.name)
        self.visitor = CountingVisitor()
        self.reader = StreamReader(self.visitor)
        streamgen.feed_chunks(self.reader, self.data, [65536, 1000, 7])

    def test_capture_is_intact(self) -> None:
        self.assertEqual(self.meta["stream_sha256"],
                         hashlib.sha256(self.data).hexdigest())
        self.assertEqual("completed", self.meta["source_status"])

    def test_parses_to_tail(self) -> None:
        r = self.reader
        self.assertEqual(ReaderState.TAIL, r.state)
        self.assertEqual(self.machine, r.preamble.machine_type)
        self.assertEqual((), r.preamble.capabilities)
        self.assertEqual(BLOCKS, [(b.name, b.used_length)
                                  for b in r.ram_start.blocks])
        self.assertEqual(4, r.ram_start.version_id)
        self.assertEqual(sum(n for _, n in BLOCKS), r.ram_start.total_bytes)
        expected = [c.CMD_OPEN_RETURN_PATH, c.CMD_PING]
        if self.switchover_start:
            expected.append(c.CMD_SWITCHOVER_START)
        self.assertEqual(expected, [cmd for cmd, _ in self.visitor.commands])
        self.assertEqual(len(self.data), r.offset)

    def test_counts_match_qemu(self) -> None:
        ram = self.meta["source_ram"]
        self.assertEqual(ram["normal"], self.reader.pages)
        self.assertEqual(ram["duplicate"], self.reader.zero_pages)
        self.assertEqual(self.reader.pages, self.visitor.page_events)
        self.assertEqual(self.reader.pages + self.reader.zero_pages,
                         sum(self.visitor.writes.values()))
        # Precopy's first pass sends every page of every block once.
        for block in self.reader.ram_start.blocks:
            self.assertEqual(set(range(block.npages)),
                             set(self.visitor.final[block.name]), block.name)

    def test_payload_arrived(self) -> None:
        base = self.meta["payload"]["addr"] // c.PAGE_SIZE
        ram = self.visitor.final["pc.ram"]
        for i, page in enumerate(payload_pages(self.meta)):
            self.assertEqual(page, ram[base + i])

    def test_tail_is_device_state(self) -> None:
        tail = bytes(self.visitor.tail)
        self.assertEqual(c.SECTION_FULL, tail[0])
        # ... EOF, then VMDESCRIPTION (be32 length + JSON) ends the stream.
        start = tail.rindex(b"\x00\x06") + 2
        (length,) = struct.unpack_from(">I", tail, start)
        self.assertEqual(len(tail), start + 4 + length)
        desc = json.loads(tail[start + 4:])
        self.assertEqual(c.PAGE_SIZE, desc["page_size"])

    def test_round_trip(self) -> None:
        # With CONTINUE our writer reproduces QEMU's bytes exactly ...
        self.assertEqual(self.data, streamgen.reencode(self.data))
        # ... and without it the memory is the same (7 bytes more per
        # record for 'pc.ram').
        again = streamgen.reencode(self.data, use_continue=False)
        self.assertGreater(len(again), len(self.data))
        decoded = streamgen.decode(again, 4096)
        self.assertEqual(self.visitor.final, decoded.final)
        self.assertEqual(bytes(self.visitor.tail),
                         bytes(decoded.visitor.tail))
        self.assertEqual((self.reader.pages, self.reader.zero_pages),
                         (decoded.reader.pages, decoded.reader.zero_pages))


class TestPc100(RecordedStreamMixin, testtools.TestCase):
    name = "qemu10.0-pc"


class TestPc92(RecordedStreamMixin, testtools.TestCase):
    name = "qemu10.0-pc-i440fx-9.2"
    machine = "pc-i440fx-9.2"
    switchover_start = False


class TestDirtier(RecordedStreamMixin, testtools.TestCase):
    name = "qemu10.0-pc-dirtier"

    def test_pages_resent_last_write_wins(self) -> None:
        self.assertGreater(self.reader.sections, 5)
        dirtied = range(0x10, 0x90)         # the boot sector's pages
        counters = []
        for page in dirtied:
            self.assertGreater(self.visitor.writes["pc.ram", page], 1)
            data = self.visitor.final["pc.ram"][page]
            counters.append(struct.unpack_from("<H", data)[0])
        self.assertGreater(min(counters), 1)


class TestUnsupportedRecordings(testtools.TestCase):

    def test_postcopy_ram_rejected(self) -> None:
        data, _ = load("qemu10.0-pc-postcopy-ram")
        visitor = streamgen.MemoryVisitor()
        reader = StreamReader(visitor)
        err = self.assertRaises(exception.UnsupportedStreamError,
                                reader.feed, data)
        self.assertEqual("postcopy-advise", err.feature)
        self.assertEqual(c.CMD_POSTCOPY_ADVISE, err.command)
        self.assertEqual(len(reader.preamble.raw) + 5 + 9, err.offset)
        self.assertEqual([c.CMD_OPEN_RETURN_PATH, c.CMD_PING],
                         [cmd for cmd, _ in visitor.commands])
        self.assertEqual(ReaderState.FAILED, reader.state)

    def test_xbzrle_rejected(self) -> None:
        data, meta = load("qemu10.0-pc-xbzrle")
        self.assertGreater(meta["source_xbzrle"]["pages"], 0)
        reader = StreamReader(streamgen.MemoryVisitor())
        err = self.assertRaises(exception.UnsupportedStreamError,
                                streamgen.feed_chunks, reader, data, 50000)
        self.assertEqual(("xbzrle", "XBZRLE"), (err.feature, err.record))
        (word,) = struct.unpack_from(">Q", data, err.offset)
        self.assertEqual(c.RAM_FLAG_XBZRLE,
                         word & c.PAGE_MASK & ~c.RAM_FLAG_CONTINUE)
        self.assertGreaterEqual(reader.sections, 2)
        self.assertGreater(err.offset, len(reader.ram_start.raw))
