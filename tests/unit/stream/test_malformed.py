"""StreamReader on invalid or unsupported input: exact error and data."""

from __future__ import annotations

import random
import struct

import testtools

from nova_dcmigrate.stream import constants as c
from nova_dcmigrate.stream import exception
from nova_dcmigrate.stream import ReaderState
from nova_dcmigrate.stream import StreamReader
from nova_dcmigrate.stream import StreamVisitor
from tests.unit.stream import streamgen

P, Z, CONT = c.RAM_FLAG_PAGE, c.RAM_FLAG_ZERO, c.RAM_FLAG_CONTINUE
PAGE = b"\x5a" * c.PAGE_SIZE
SID = 1
BLOCKS = {"pc.ram": 0x10000, "pc.rom": 0x2000}
PRE = streamgen.encode_preamble()
CMDS = (streamgen.encode_command(c.CMD_OPEN_RETURN_PATH)
        + streamgen.encode_ping())
START = streamgen.encode_ram_start(BLOCKS, section_id=SID)
HEAD = PRE + CMDS + START
#: Offset where the first section after START(ram) begins.
RAM = len(HEAD)


def part(body: bytes = b"", kind: int = c.SECTION_PART, sid: int = SID,
         footer: bytes | None = None) -> bytes:
    """A PART/END section: header, ``body`` records, EOS and footer."""
    if footer is None:
        footer = streamgen.encode_footer(sid)
    return (streamgen.encode_section_header(kind, sid) + body
            + streamgen.encode_record(c.RAM_FLAG_EOS) + footer)


def rec(flags: int, addr: int = 0, idstr: str | None = "pc.ram",
        payload: bytes | None = None) -> bytes:
    if flags & CONT:
        idstr = None
    if payload is None:
        payload = PAGE if flags & P else b"\0" if flags & Z else b""
    return streamgen.encode_record(flags, addr, idstr, payload)


class ErrorTestCase(testtools.TestCase):

    def assertStreamError(self, cls: type, data: bytes,
                          **attrs: object) -> exception.StreamError:
        """Parse ``data`` (then close); expect exactly ``cls`` and ``attrs``.

        The same error must come out when the input is fed in small pieces.
        """
        reader = StreamReader(StreamVisitor())
        try:
            reader.feed(data)
            reader.close()
        except exception.StreamError as caught:
            err = caught
        else:
            self.fail("no error for %d bytes" % len(data))
        self.assertIs(cls, type(err), str(err))
        for key, value in attrs.items():
            self.assertEqual(value, getattr(err, key), "%s of %s" % (key, err))
        self.assertEqual(ReaderState.FAILED, reader.state)
        self.assertIs(err, self.assertRaises(cls, reader.close))
        _, again = streamgen.events(data, 1 if len(data) < 12000 else 777)
        self.assertIs(cls, type(again))
        self.assertEqual(err.kwargs, again.kwargs)
        self.assertEqual(str(err), str(again))
        return err


class TestPreamble(ErrorTestCase):

    def test_bad_magic(self) -> None:
        err = self.assertStreamError(exception.MalformedStreamError,
                                     b"QEVX" + PRE[4:], offset=0)
        self.assertIn("bad magic 0x51455658", str(err))

    def test_bad_version(self) -> None:
        data = PRE[:4] + struct.pack(">I", 2) + PRE[8:]
        err = self.assertStreamError(exception.MalformedStreamError, data,
                                     offset=4)
        self.assertIn("version 2", str(err))

    def test_missing_configuration(self) -> None:
        data = PRE[:8] + CMDS
        self.assertStreamError(exception.MalformedStreamError, data, offset=8)

    def test_machine_type_length(self) -> None:
        for length in (0, 257, 0xFFFFFFFF):
            data = PRE[:9] + struct.pack(">I", length) + b"x" * 300
            self.assertStreamError(exception.MalformedStreamError, data,
                                   offset=8)

    def test_machine_type_not_ascii(self) -> None:
        data = PRE[:9] + struct.pack(">I", 3) + b"p\xffc" + CMDS
        self.assertStreamError(exception.MalformedStreamError, data,
                               offset=8)

    def test_unknown_configuration_subsection(self) -> None:
        sub = streamgen.encode_subsection("configuration/x-new", b"")
        data = PRE + sub + CMDS
        self.assertStreamError(exception.UnsupportedStreamError, data,
                               offset=len(PRE),
                               feature="configuration/x-new")

    def test_subsection_version(self) -> None:
        sub = streamgen.encode_subsection(
            c.CONFIG_SUBSECTION_UUID, bytes(16), version=2)
        self.assertStreamError(exception.MalformedStreamError,
                               PRE + sub + CMDS, offset=len(PRE))

    def test_capability_mapped_ram(self) -> None:
        pre = streamgen.encode_preamble(
            capabilities=[c.CAPABILITY_IGNORE_SHARED, c.CAPABILITY_MAPPED_RAM])
        cap = len(PRE) + 2 + len(c.CONFIG_SUBSECTION_CAPABILITIES) + 8 + 16
        err = self.assertStreamError(exception.UnsupportedStreamError,
                                     pre + CMDS, offset=cap,
                                     feature="mapped-ram")
        self.assertIn("'mapped-ram'", str(err))

    def test_unknown_capability(self) -> None:
        pre = streamgen.encode_preamble(capabilities=["x-future"])
        self.assertStreamError(exception.UnsupportedStreamError, pre + CMDS,
                               feature="x-future")

    def test_too_many_capabilities(self) -> None:
        sub = streamgen.encode_subsection(
            c.CONFIG_SUBSECTION_CAPABILITIES, struct.pack(">I", 1 << 30))
        self.assertStreamError(exception.MalformedStreamError,
                               PRE + sub, offset=len(PRE))

    def test_target_page_bits(self) -> None:
        pre = streamgen.encode_preamble(target_page_bits=16)
        self.assertStreamError(exception.UnsupportedStreamError, pre + CMDS,
                               offset=len(PRE),
                               feature=c.FEATURE_TARGET_PAGE_BITS)


class TestCommands(ErrorTestCase):

    def test_command_lengths(self) -> None:
        for cmd, length in ((c.CMD_PING, 8), (c.CMD_PING, 0),
                            (c.CMD_OPEN_RETURN_PATH, 3),
                            (c.CMD_SWITCHOVER_START, 0xFFFF)):
            data = PRE + streamgen.encode_command(cmd, bytes(length))
            err = self.assertStreamError(exception.MalformedStreamError,
                                         data, offset=len(PRE), command=cmd)
            self.assertIn("length %d" % length, str(err))

    def test_unknown_commands(self) -> None:
        for cmd in (c.CMD_INVALID, 12, 0x42, 0xFFFF):
            self.assertStreamError(
                exception.MalformedStreamError,
                PRE + streamgen.encode_command(cmd), offset=len(PRE),
                command=cmd)

    def test_unsupported_commands(self) -> None:
        for cmd, feature in c.UNSUPPORTED_COMMAND_FEATURES.items():
            encoded = streamgen.encode_command(cmd, bytes(16))
            # Before START(ram) ...
            self.assertStreamError(
                exception.UnsupportedStreamError, PRE + CMDS + encoded,
                offset=len(PRE + CMDS), feature=feature, command=cmd)
            # ... and between RAM sections.
            data = HEAD + part() + encoded
            self.assertStreamError(
                exception.UnsupportedStreamError, data,
                offset=RAM + len(part()), feature=feature, command=cmd)
        self.assertEqual({3, 4, 5, 6, 7, 8, 9, 10},
                         set(c.UNSUPPORTED_COMMAND_FEATURES))

    def test_postcopy_advise_message(self) -> None:
        err = self.assertStreamError(
            exception.UnsupportedStreamError,
            PRE + CMDS + streamgen.encode_command(c.CMD_POSTCOPY_ADVISE),
            feature="postcopy-advise")
        self.assertEqual(
            "stream offset %d: unsupported migration feature "
            "'postcopy-advise': command POSTCOPY_ADVISE (3) is not supported "
            "by a precopy stream-level proxy" % len(PRE + CMDS), str(err))


class TestSections(ErrorTestCase):

    def test_full_before_ram_start(self) -> None:
        full = (streamgen.encode_section_header(
            c.SECTION_FULL, 5, "virtio-mem", 0, 1) + bytes(8)
                + streamgen.encode_footer(5))
        self.assertStreamError(
            exception.UnsupportedStreamError, PRE + CMDS + full + START,
            offset=len(PRE + CMDS), feature=c.FEATURE_EARLY_SETUP)

    def test_non_ram_iterable(self) -> None:
        other = streamgen.encode_section_header(
            c.SECTION_START, 7, "dirty-bitmap", 0, 1) + bytes(20)
        err = self.assertStreamError(
            exception.UnsupportedStreamError, PRE + CMDS + other,
            offset=len(PRE + CMDS), feature=c.FEATURE_ITERABLE_SECTION,
            idstr="dirty-bitmap")
        self.assertIn("'dirty-bitmap'", str(err))
        # Also after START(ram), e.g. 'block' in 7.2.
        other = streamgen.encode_section_header(c.SECTION_START, 7, "block")
        self.assertStreamError(
            exception.UnsupportedStreamError, HEAD + other, offset=RAM,
            feature=c.FEATURE_ITERABLE_SECTION, idstr="block")

    def test_second_ram_start(self) -> None:
        self.assertStreamError(exception.MalformedStreamError,
                               HEAD + part() + START,
                               offset=RAM + len(part()))

    def test_part_before_start(self) -> None:
        self.assertStreamError(exception.MalformedStreamError,
                               PRE + CMDS + part(), offset=len(PRE + CMDS))

    def test_eof_early(self) -> None:
        self.assertStreamError(exception.MalformedStreamError,
                               PRE + CMDS + b"\0", offset=len(PRE + CMDS))
        self.assertStreamError(exception.MalformedStreamError,
                               HEAD + part() + b"\0",
                               offset=RAM + len(part()))

    def test_full_before_end(self) -> None:
        self.assertStreamError(exception.MalformedStreamError,
                               HEAD + streamgen.fake_tail(), offset=RAM)

    def test_garbage(self) -> None:
        for junk in (b"\x42", b"\xff" * 50, b"\x7e\0\0\0\1",
                     bytes([c.SECTION_VMDESCRIPTION]) + bytes(8)):
            self.assertStreamError(exception.MalformedStreamError,
                                   HEAD + junk, offset=RAM)
            self.assertStreamError(exception.MalformedStreamError,
                                   PRE + CMDS + junk,
                                   offset=len(PRE + CMDS))

    def test_wrong_section_id(self) -> None:
        for kind in (c.SECTION_PART, c.SECTION_END):
            err = self.assertStreamError(
                exception.MalformedStreamError,
                HEAD + part(kind=kind, sid=2), offset=RAM, section_id=2)
            self.assertIn("wrong section id 2", str(err))

    def test_bad_footer(self) -> None:
        footer_at = RAM + 5 + len(rec(Z)) + 8
        err = self.assertStreamError(
            exception.MalformedStreamError,
            HEAD + part(rec(Z), footer=b"\x7f\0\0\0\1"), offset=footer_at)
        self.assertIn("found byte 0x7f", str(err))
        self.assertStreamError(
            exception.MalformedStreamError,
            HEAD + part(rec(Z), footer=streamgen.encode_footer(9)),
            offset=footer_at, section_id=9)
        self.assertStreamError(
            exception.MalformedStreamError,
            HEAD + part(kind=c.SECTION_END, footer=streamgen.encode_footer(0)),
            offset=RAM + 5 + 8, section_id=0)

    def test_eos_with_extra_bits(self) -> None:
        for word in (c.RAM_FLAG_EOS | CONT, c.RAM_FLAG_EOS | 0x1000):
            data = HEAD + streamgen.encode_section_header(
                c.SECTION_PART, SID) + struct.pack(">Q", word)
            self.assertStreamError(exception.MalformedStreamError, data,
                                   offset=RAM + 5, record="EOS")


class TestRamStart(ErrorTestCase):

    def start(self, body: bytes, footer_sid: int = SID) -> bytes:
        return (PRE + CMDS + streamgen.encode_section_header(
            c.SECTION_START, SID, "ram") + body
                + streamgen.encode_footer(footer_sid))

    @staticmethod
    def entry(name: str, length: int) -> bytes:
        return bytes([len(name)]) + name.encode() + struct.pack(">Q", length)

    def test_total_larger_than_list(self) -> None:
        data = streamgen.encode_ram_start(BLOCKS, total=0x13000)
        eos = len(data) - 13
        self.assertStreamError(exception.MalformedStreamError,
                               PRE + CMDS + data, offset=len(PRE + CMDS) + eos)

    def test_total_smaller_than_list(self) -> None:
        data = streamgen.encode_ram_start(BLOCKS, total=0x11000)
        last = len(data) - 13 - len(self.entry("pc.rom", 0))
        err = self.assertStreamError(
            exception.MalformedStreamError, PRE + CMDS + data,
            offset=len(PRE + CMDS) + last, block="pc.rom")
        self.assertIn("does not fit the MEM_SIZE total 0x11000", str(err))

    def test_list_longer_than_total(self) -> None:
        body = (struct.pack(">Q", 0x1000 | c.RAM_FLAG_MEM_SIZE)
                + self.entry("a", 0x1000) + self.entry("b", 0x1000)
                + struct.pack(">Q", c.RAM_FLAG_EOS))
        hdr = len(PRE + CMDS) + 5 + 1 + 3 + 8
        err = self.assertStreamError(
            exception.MalformedStreamError, self.start(body),
            offset=hdr + 8 + len(self.entry("a", 0)))
        self.assertIn("expected EOS", str(err))

    def test_not_mem_size(self) -> None:
        body = struct.pack(">Q", 0x1000 | P)
        self.assertStreamError(exception.MalformedStreamError,
                               self.start(body), record="PAGE",
                               offset=len(PRE + CMDS) + 5 + 1 + 3 + 8)

    def test_duplicate_and_empty_names(self) -> None:
        for entries, name in (
                (self.entry("a", 0x1000) * 2, "a"),
                (self.entry("", 0x1000) + self.entry("a", 0x1000), None),
                (self.entry("a", 0) + self.entry("b", 0x2000), "a")):
            body = (struct.pack(">Q", 0x2000 | c.RAM_FLAG_MEM_SIZE)
                    + entries + struct.pack(">Q", c.RAM_FLAG_EOS))
            err = self.assertStreamError(exception.MalformedStreamError,
                                         self.start(body))
            if name is not None:
                self.assertEqual(name, err.block)

    def test_start_footer(self) -> None:
        body = (struct.pack(">Q", 0x1000 | c.RAM_FLAG_MEM_SIZE)
                + self.entry("a", 0x1000)
                + struct.pack(">Q", c.RAM_FLAG_EOS))
        data = self.start(body, footer_sid=SID + 1)
        self.assertStreamError(exception.MalformedStreamError, data,
                               offset=len(data) - 5, section_id=SID + 1)


class TestRecords(ErrorTestCase):

    def test_unknown_block(self) -> None:
        body = rec(Z, 0) + rec(P, 0x1000, idstr="vga.vram")
        err = self.assertStreamError(
            exception.UnknownBlockError, HEAD + part(body),
            offset=RAM + 5 + len(rec(Z)), block="vga.vram", record="PAGE")
        self.assertEqual(
            "stream offset %d: RAM PAGE record names block 'vga.vram', which "
            "START(ram) did not announce" % err.offset, str(err))

    def test_oversized_idstr(self) -> None:
        # A length byte that swallows page data as the block name.
        body = struct.pack(">QB", P, 200) + b"pc.ram" + PAGE
        err = self.assertStreamError(exception.UnknownBlockError,
                                     HEAD + part(body), offset=RAM + 5)
        self.assertEqual(200, len(err.block))

    def test_page_past_block_end(self) -> None:
        for flags, first in ((P, b""), (Z, b""), (P | CONT, rec(Z)),
                             (Z | CONT, rec(Z))):
            body = first + rec(flags, 0x10000)
            err = self.assertStreamError(
                exception.PageOutOfRangeError, HEAD + part(body),
                offset=RAM + 5 + len(first), block="pc.ram",
                page_offset=0x10000, used_length=0x10000,
                record=c.RAM_FLAG_NAMES[flags & ~CONT])
        self.assertEqual(
            "stream offset %d: RAM ZERO record for block 'pc.ram' at offset "
            "0x10000 is past the block end (0x10000)" % err.offset, str(err))
        err = self.assertStreamError(
            exception.PageOutOfRangeError,
            HEAD + part(rec(P, 0x9000000, idstr="pc.rom")),
            block="pc.rom", page_offset=0x9000000, used_length=0x2000)

    def test_unaligned_offset_is_unknown_flags(self) -> None:
        # On x86 the low 12 bits are flags, so an "unaligned" page offset
        # shows up as undefined flag bits.
        for addr_bits in (0x800, 0x400, 0xC00):
            body = rec(P) + rec(P | CONT, 0x1000 | addr_bits)
            err = self.assertStreamError(
                exception.MalformedStreamError, HEAD + part(body),
                offset=RAM + 5 + len(rec(P)))
            self.assertIn("unknown flag bits %#05x" % addr_bits, str(err))

    def test_continue_without_block(self) -> None:
        for flags in (P | CONT, Z | CONT):
            self.assertStreamError(
                exception.MalformedStreamError, HEAD + part(rec(flags)),
                offset=RAM + 5, record=c.RAM_FLAG_NAMES[flags & ~CONT])

    def test_zero_fill_must_be_zero(self) -> None:
        for first, flags in ((b"", Z), (rec(Z), Z | CONT)):
            body = first + rec(flags, 0x3000, payload=b"\x01")
            err = self.assertStreamError(
                exception.MalformedStreamError, HEAD + part(body),
                offset=RAM + 5 + len(first), record="ZERO", block="pc.ram")
            self.assertIn("fill byte 0x01", str(err))

    def test_unsupported_flags(self) -> None:
        for flag, feature in c.UNSUPPORTED_RAM_FLAG_FEATURES.items():
            for extra in (0, CONT):
                body = rec(Z) + struct.pack(">Q", 0x2000 | flag | extra)
                self.assertStreamError(
                    exception.UnsupportedStreamError, HEAD + part(body),
                    offset=RAM + 5 + len(rec(Z)), feature=feature,
                    record=c.RAM_FLAG_NAMES[flag])

    def test_invalid_flag_combinations(self) -> None:
        for flags, record in ((c.RAM_FLAG_FULL, "FULL"),
                              (c.RAM_FLAG_MEM_SIZE, "MEM_SIZE"),
                              (P | Z, "0x00a"), (0, "0x000"),
                              (CONT, "0x020"),
                              (P | c.RAM_FLAG_XBZRLE, "0x048")):
            body = struct.pack(">Q", 0x1000 | flags) + PAGE
            self.assertStreamError(exception.MalformedStreamError,
                                   HEAD + part(body), offset=RAM + 5,
                                   record=record)


class TestTruncation(testtools.TestCase):

    def test_every_prefix(self) -> None:
        rng = random.Random(5)
        writes = [("pc.ram", 1, streamgen.page_data(rng)),
                  ("pc.ram", 2, None), ("pc.rom", 0, None),
                  ("pc.rom", 1, streamgen.page_data(rng)),
                  ("pc.ram", 3, None)]
        stream = streamgen.build_stream(BLOCKS, writes,
                                        records_per_section=2,
                                        ping_between=True,
                                        tail=streamgen.fake_tail()[:40])
        data = stream.data
        self.assertLess(len(data), 20000)
        records_seen = set()
        for n in range(len(data) + 1):
            reader = StreamReader(StreamVisitor())
            reader.feed(data[:n])
            if n >= stream.tail_offset:
                reader.close()
                self.assertEqual(ReaderState.TAIL, reader.state)
                continue
            consumed = reader.offset
            err = self.assertRaises(exception.TruncatedStreamError,
                                    reader.close)
            self.assertEqual(consumed, err.offset)
            self.assertLessEqual(err.offset, n)
            self.assertIn("input ended", str(err))
            self.assertIs(err, self.assertRaises(
                exception.TruncatedStreamError, reader.close))
            records_seen.add(err.kwargs.get("record"))
        self.assertEqual({None, "PAGE", "ZERO"}, records_seen)

    def test_message(self) -> None:
        stream = streamgen.build_stream(
            BLOCKS, [("pc.ram", 1, PAGE)], switchover_start=False)
        cut = stream.ram_offset + 5 + 100
        reader = StreamReader(StreamVisitor())
        reader.feed(stream.data[:cut])
        err = self.assertRaises(exception.TruncatedStreamError, reader.close)
        self.assertEqual(
            "stream offset %d: stream ended early: input ended inside a RAM "
            "PAGE record (100 bytes of it received)" % (cut - 100), str(err))
        self.assertEqual("PAGE", err.record)

    def test_empty_input(self) -> None:
        reader = StreamReader(StreamVisitor())
        err = self.assertRaises(exception.TruncatedStreamError, reader.close)
        self.assertEqual(0, err.offset)
