"""StreamWriter: exact encoding, CONTINUE tracking, misuse."""

from __future__ import annotations

import struct

import testtools

from nova_dcmigrate.stream import constants as c
from nova_dcmigrate.stream import exception
from nova_dcmigrate.stream import StreamWriter
from tests.unit.stream import streamgen

PAGE = b"\xab" * c.PAGE_SIZE


def records_of(data: bytes) -> list[tuple[int, str | None]]:
    """Split a run of PAGE/ZERO records (no EOS) into (word, idstr)."""
    out = []
    pos = 0
    while pos < len(data):
        (word,) = struct.unpack_from(">Q", data, pos)
        pos += 8
        name = None
        if not word & c.RAM_FLAG_CONTINUE:
            n = data[pos]
            name = data[pos + 1:pos + 1 + n].decode()
            pos += 1 + n
        pos += c.PAGE_SIZE if word & c.RAM_FLAG_PAGE else 1
        out.append((word, name))
    return out


class TestStreamWriter(testtools.TestCase):

    def setUp(self) -> None:
        super().setUp()
        self.start = streamgen.make_ram_start()

    def _writer(self, **kwargs: bool) -> StreamWriter:
        w = StreamWriter(**kwargs)
        w.ram_start(self.start)
        self.assertEqual(self.start.raw, w.take())
        return w

    def test_continue_tracking(self) -> None:
        w = self._writer()
        w.begin_section(c.SECTION_PART)
        head = w.take()
        self.assertEqual(struct.pack(">BI", c.SECTION_PART, 1), head)
        w.page("pc.ram", 1, PAGE)
        w.zero("pc.ram", 2)
        w.page("pc.bios", 3, PAGE)
        w.zero(self.start.block("pc.bios"), 4)
        w.page("pc.ram", 5, PAGE)
        body = w.take()
        w.end_section()
        self.assertEqual(struct.pack(">QBI", c.RAM_FLAG_EOS, c.SECTION_FOOTER,
                                     1), w.take())
        # The last block persists into the next section.
        w.begin_section(c.SECTION_END)
        w.take()
        w.zero("pc.ram", 6)
        nxt = w.take()
        P, Z, C = c.RAM_FLAG_PAGE, c.RAM_FLAG_ZERO, c.RAM_FLAG_CONTINUE
        self.assertEqual([
            (0x1000 | P, "pc.ram"),
            (0x2000 | Z | C, None),
            (0x3000 | P, "pc.bios"),
            (0x4000 | Z | C, None),
            (0x5000 | P, "pc.ram"),
        ], records_of(body))
        self.assertEqual([(0x6000 | Z | C, None)], records_of(nxt))

    def test_without_continue(self) -> None:
        w = self._writer(use_continue=False)
        w.begin_section(c.SECTION_PART)
        w.take()
        w.page("pc.ram", 1, PAGE)
        w.zero("pc.ram", 2)
        self.assertEqual([(0x1000 | c.RAM_FLAG_PAGE, "pc.ram"),
                          (0x2000 | c.RAM_FLAG_ZERO, "pc.ram")],
                         records_of(w.take()))

    def test_exact_record_bytes(self) -> None:
        w = self._writer()
        w.begin_section(c.SECTION_PART)
        w.take()
        w.zero("pc.ram", 0x10)
        w.zero("pc.ram", 0x11)
        self.assertEqual(
            bytes.fromhex("0000000000010002") + b"\x06pc.ram\x00"
            + bytes.fromhex("0000000000011022") + b"\x00", w.take())

    def test_ram_start_resets_last_block(self) -> None:
        w = self._writer()
        w.begin_section(c.SECTION_PART)
        w.zero("pc.ram", 0)
        w.end_section()
        w.ram_start(self.start)
        w.begin_section(c.SECTION_PART)
        w.take()
        w.zero("pc.ram", 0)
        self.assertEqual([(c.RAM_FLAG_ZERO, "pc.ram")], records_of(w.take()))

    def test_command_preamble_raw_tail(self) -> None:
        w = StreamWriter()
        pre = streamgen.make_preamble()
        w.preamble(pre)
        w.command(c.CMD_PING, b"\0\0\0\1")
        w.command(c.CMD_SWITCHOVER_START)
        w.raw(b"R")
        w.tail(b"TAIL")
        self.assertEqual(len(pre.raw) + 9 + 5 + 5, w.pending())
        self.assertEqual(pre.raw + bytes.fromhex("080002000400000001")
                         + bytes.fromhex("08000b0000") + b"RTAIL", w.take())
        self.assertEqual(0, w.pending())
        self.assertEqual(len(pre.raw) + 19, w.offset)
        self.assertEqual(b"", w.take())

    def test_misuse(self) -> None:
        w = StreamWriter()
        self.assertRaises(ValueError, w.begin_section, c.SECTION_PART)
        w.ram_start(self.start)
        self.assertRaises(ValueError, w.page, "pc.ram", 0, PAGE)
        self.assertRaises(ValueError, w.end_section)
        self.assertRaises(ValueError, w.begin_section, c.SECTION_FULL)
        w.begin_section(c.SECTION_PART)
        self.assertRaises(ValueError, w.begin_section, c.SECTION_PART)
        self.assertRaises(ValueError, w.page, "pc.ram", 0, b"short")
        self.assertRaises(ValueError, w.command, 1, bytes(70000))
        before = w.offset
        err = self.assertRaises(exception.UnknownBlockError, w.zero,
                                "vga.vram", 0)
        self.assertEqual(("vga.vram", before, "ZERO"),
                         (err.block, err.offset, err.record))
        err = self.assertRaises(exception.PageOutOfRangeError, w.page,
                                "pc.rom", 0x20, PAGE)
        self.assertEqual(("pc.rom", 0x20000, 0x20000, before),
                         (err.block, err.page_offset, err.used_length,
                          err.offset))
        self.assertRaises(exception.PageOutOfRangeError, w.zero, "pc.rom", -1)
        self.assertEqual(before, w.offset)       # nothing half-written

    def test_accepts_memoryview_data(self) -> None:
        w = self._writer()
        w.begin_section(c.SECTION_PART)
        w.page("pc.ram", 0, memoryview(bytearray(PAGE)))
        w.end_section()
        self.assertEqual(5 + 8 + 7 + c.PAGE_SIZE + 13, w.pending())
