"""StreamReader on valid streams: events, state, counters, buffer API."""

from __future__ import annotations

import random
import struct

import testtools

from nova_dcmigrate.stream import constants as c
from nova_dcmigrate.stream import exception
from nova_dcmigrate.stream import records
from nova_dcmigrate.stream import ReaderState
from nova_dcmigrate.stream import StreamReader
from nova_dcmigrate.stream import StreamVisitor
from tests.unit.stream import streamgen


class StateRecorder(streamgen.EventRecorder):
    """Also records the reader state at each event."""

    reader: StreamReader

    def on_preamble(self, preamble: records.Preamble) -> None:
        super().on_preamble(preamble)
        self.events.append(("state", self.reader.state, self.reader.offset))

    def on_ram_start(self, start: records.RamStart) -> None:
        super().on_ram_start(start)
        self.events.append(("state", self.reader.state, self.reader.offset))

    def on_section_end(self, kind: int, section_id: int) -> None:
        super().on_section_end(kind, section_id)
        self.events.append(("state", self.reader.state, self.reader.offset))


class TestValidStream(testtools.TestCase):

    def setUp(self) -> None:
        super().setUp()
        rng = random.Random(7)
        self.writes = [
            ("pc.ram", 0, streamgen.page_data(rng)),
            ("pc.ram", 1, None),
            ("pc.ram", 2047, streamgen.page_data(rng)),
            ("pc.bios", 3, streamgen.page_data(rng)),
            ("pc.ram", 0, None),                      # rewritten: zero wins
            ("/rom@etc/acpi/rsdp", 0, streamgen.page_data(rng)),
            ("pc.ram", 5, streamgen.page_data(rng)),
        ]
        self.stream = streamgen.build_stream(
            writes=self.writes, records_per_section=3, ping_between=True)

    def test_final_memory_and_counters(self) -> None:
        decoded = streamgen.decode(self.stream.data)
        reader = decoded.reader
        self.assertEqual(self.stream.final, decoded.final)
        self.assertEqual(streamgen.ZERO_PAGE, decoded.final["pc.ram"][0])
        self.assertEqual(ReaderState.TAIL, reader.state)
        self.assertEqual(4 + 1, reader.pages)       # 5 PAGE records
        self.assertEqual(2, reader.zero_pages)
        self.assertEqual(3, reader.sections)
        self.assertEqual(len(self.stream.data), reader.offset)
        self.assertEqual(self.stream.tail, bytes(decoded.visitor.tail))
        self.assertEqual(self.stream.preamble, reader.preamble)
        self.assertEqual(self.stream.ram_start, reader.ram_start)

    def test_event_sequence_and_states(self) -> None:
        visitor = StateRecorder()
        reader = StreamReader(visitor)
        visitor.reader = reader
        pre_len = len(self.stream.preamble.raw)
        reader.feed(self.stream.data)
        reader.close()
        ev = visitor.events
        sid = streamgen.DEFAULT_SECTION_ID
        self.assertEqual(("preamble", self.stream.preamble), ev[0])
        self.assertEqual(("state", ReaderState.PRE_RAM, pre_len), ev[1])
        self.assertEqual(("command", c.CMD_OPEN_RETURN_PATH, b"",
                          bytes.fromhex("0800010000")), ev[2])
        self.assertEqual(("command", c.CMD_PING, b"\0\0\0\1",
                          bytes.fromhex("080002000400000001")), ev[3])
        self.assertEqual(("ram_start", self.stream.ram_start), ev[4])
        self.assertEqual(("state", ReaderState.RAM, self.stream.ram_offset),
                         ev[5])
        kinds = [e[0] for e in ev[6:]]
        self.assertEqual(
            ["begin", "page", "zero", "page", "end", "state",
             "command",
             "begin", "page", "zero", "page", "end", "state",
             "command",
             "begin", "page", "end", "state", "tail"], kinds)
        self.assertEqual(("begin", c.SECTION_PART, sid), ev[6])
        self.assertEqual(("command", c.CMD_PING, b"\0\0\0\2",
                          bytes.fromhex("080002000400000002")), ev[12])
        self.assertEqual(("command", c.CMD_SWITCHOVER_START, b"",
                          bytes.fromhex("08000b0000")), ev[19])
        self.assertEqual(("begin", c.SECTION_END, sid), ev[20])
        self.assertEqual(("state", ReaderState.TAIL,
                          self.stream.tail_offset), ev[23])
        self.assertEqual(("page", "pc.ram", 2047, self.writes[2][2]), ev[9])

    def test_continue_persists_across_sections(self) -> None:
        # One record per section: the second PART starts with a CONTINUE
        # record that refers to the block named in the first PART.
        writes = [("pc.ram", 1, None), ("pc.ram", 2, None),
                  ("pc.ram", 3, None)]
        stream = streamgen.build_stream(writes=writes, records_per_section=1,
                                        switchover_start=False)
        second = stream.ram_offset + 5 + 16 + 13     # PART(5) ZERO(16) EOS
        self.assertEqual(struct.pack(">BI", c.SECTION_PART, 1),
                         stream.data[second:second + 5])
        (word,) = struct.unpack_from(">Q", stream.data, second + 5)
        self.assertEqual(0x2000 | c.RAM_FLAG_ZERO | c.RAM_FLAG_CONTINUE, word)
        self.assertEqual(stream.final, streamgen.decode(stream.data).final)

    def test_tail_is_opaque_and_split(self) -> None:
        visitor = streamgen.MemoryVisitor()
        calls = []
        visitor.on_tail = (  # type: ignore[method-assign]
            lambda data: calls.append(bytes(data)))
        reader = StreamReader(visitor)
        streamgen.feed_chunks(reader, self.stream.data, 97)
        self.assertGreater(len(calls), 1)
        self.assertEqual(self.stream.tail, b"".join(calls))

    def test_garbage_tail_is_not_parsed(self) -> None:
        tail = bytes(range(256)) * 10
        stream = streamgen.build_stream(writes=[], tail=tail)
        decoded = streamgen.decode(stream.data, 13)
        self.assertEqual(tail, bytes(decoded.visitor.tail))
        self.assertEqual(ReaderState.TAIL, decoded.reader.state)

    def test_empty_ram_sections(self) -> None:
        stream = streamgen.build_stream(writes=[])
        decoded = streamgen.decode(stream.data)
        self.assertEqual(1, decoded.reader.sections)
        self.assertEqual(0, decoded.reader.pages + decoded.reader.zero_pages)

    def test_stream_ending_at_end_footer(self) -> None:
        stream = streamgen.build_stream(tail=b"")
        decoded = streamgen.decode(stream.data)
        self.assertEqual(ReaderState.TAIL, decoded.reader.state)
        self.assertEqual(b"", bytes(decoded.visitor.tail))

    def test_capabilities_ignore_shared(self) -> None:
        stream = streamgen.build_stream(
            capabilities=[c.CAPABILITY_IGNORE_SHARED])
        decoded = streamgen.decode(stream.data, 5)
        start = decoded.reader.ram_start
        self.assertTrue(start.ignore_shared)
        self.assertEqual((c.CAPABILITY_IGNORE_SHARED,),
                         decoded.reader.preamble.capabilities)
        self.assertEqual([i << 32 for i in range(6)],
                         [b.addr for b in start.blocks])
        self.assertEqual(stream.final, decoded.final)

    def test_uuid_and_4k_target_page_bits_accepted(self) -> None:
        pre = streamgen.encode_preamble(
            "pc-q35-10.0", target_page_bits=12, uuid=bytes(range(16)))
        stream = streamgen.build_stream(writes=[])
        data = pre + stream.data[len(stream.preamble.raw):]
        decoded = streamgen.decode(data, 1)
        self.assertEqual("pc-q35-10.0", decoded.reader.preamble.machine_type)
        self.assertEqual(pre, decoded.reader.preamble.raw)

    def test_ram_start_details(self) -> None:
        start = streamgen.decode(self.stream.data).reader.ram_start
        self.assertEqual(1, start.section_id)
        self.assertEqual(0, start.instance_id)
        self.assertEqual(4, start.version_id)
        self.assertEqual(sum(streamgen.DEFAULT_BLOCKS.values()),
                         start.total_bytes)
        self.assertEqual(list(streamgen.DEFAULT_BLOCKS),
                         [b.name for b in start.blocks])
        self.assertEqual(list(range(6)), [b.index for b in start.blocks])
        self.assertEqual(2048, start.block("pc.ram").npages)
        self.assertEqual(1, start.block("/rom@etc/acpi/rsdp").npages)
        self.assertFalse(start.ignore_shared)
        self.assertEqual(streamgen.encode_ram_start(), start.raw)
        err = self.assertRaises(exception.UnknownBlockError, start.block,
                                "vga.vram")
        self.assertEqual("vga.vram", err.block)
        self.assertIsNone(err.offset)
        self.assertIn("'vga.vram'", str(err))

    def test_npages_rounds_up(self) -> None:
        self.assertEqual(2, records.RamBlock(0, "x", 4097).npages)


class TestBufferApi(testtools.TestCase):

    def setUp(self) -> None:
        super().setUp()
        self.stream = streamgen.build_stream(seed=3)

    def test_buffer_updated_does_not_move_data(self) -> None:
        reader = StreamReader(StreamVisitor(), buffer_size=8192)
        data = self.stream.data
        pos = 0
        rng = random.Random(1)
        while pos < len(data):
            n = min(rng.randrange(1, 6000), len(data) - pos)
            view = reader.get_buffer(n)
            self.assertGreaterEqual(len(view), n)
            view[:n] = data[pos:pos + n]
            reader.buffer_updated(n)
            # The caller forwards view[:n] after parsing: must be intact.
            self.assertEqual(data[pos:pos + n], bytes(view[:n]))
            pos += n
        reader.close()
        self.assertEqual(len(data), reader.offset)

    def test_small_buffer_grows_for_partial_element(self) -> None:
        decoded = streamgen.decode(self.stream.data, 4000, buffer_size=16)
        self.assertEqual(self.stream.final, decoded.final)

    def test_get_buffer_min_size(self) -> None:
        reader = StreamReader(StreamVisitor(), buffer_size=100)
        self.assertGreaterEqual(len(reader.get_buffer(5000)), 5000)
        self.assertGreaterEqual(len(reader.get_buffer(0)), 1)

    def test_partial_element_is_kept(self) -> None:
        reader = StreamReader(StreamVisitor())
        reader.feed(self.stream.data[:10])       # header + 2 config bytes
        self.assertEqual(0, reader.offset)
        self.assertEqual(ReaderState.PREAMBLE, reader.state)
        reader.feed(self.stream.data[10:])
        reader.close()
        self.assertEqual(len(self.stream.data), reader.offset)

    def test_offset_after_preamble_needs_next_byte(self) -> None:
        # The configuration ends at the first byte that is not 0x05.
        reader = StreamReader(StreamVisitor())
        pre = len(self.stream.preamble.raw)
        reader.feed(self.stream.data[:pre])
        self.assertEqual(ReaderState.PREAMBLE, reader.state)
        reader.feed(self.stream.data[pre:pre + 1])
        self.assertEqual(ReaderState.PRE_RAM, reader.state)
        self.assertEqual(pre, reader.offset)

    def test_buffer_updated_too_much(self) -> None:
        reader = StreamReader(StreamVisitor(), buffer_size=64)
        free = len(reader.get_buffer(1))
        self.assertRaises(ValueError, reader.buffer_updated, free + 1)
        self.assertRaises(ValueError, reader.buffer_updated, -1)

    def test_failed_reader_reraises_same_error(self) -> None:
        reader = StreamReader(StreamVisitor())
        err = self.assertRaises(exception.MalformedStreamError, reader.feed,
                                b"XXXXXXXXXXXX")
        self.assertEqual(ReaderState.FAILED, reader.state)
        for call in (lambda: reader.get_buffer(),
                     lambda: reader.buffer_updated(0),
                     lambda: reader.feed(b"x"), reader.close):
            again = self.assertRaises(exception.MalformedStreamError, call)
            self.assertIs(err, again)

    def test_close_failure_is_sticky(self) -> None:
        reader = StreamReader(StreamVisitor())
        reader.feed(self.stream.data[:100])
        err = self.assertRaises(exception.TruncatedStreamError, reader.close)
        self.assertEqual(ReaderState.FAILED, reader.state)
        self.assertIs(err, self.assertRaises(
            exception.TruncatedStreamError, reader.feed, b"\0"))

    def test_visitor_exception_fails_reader(self) -> None:
        class Boom(StreamVisitor):
            def on_page(self, block: records.RamBlock, page: int,
                        data: memoryview) -> None:
                raise KeyError("boom")

        reader = StreamReader(Boom())
        err = self.assertRaises(KeyError, reader.feed, self.stream.data)
        self.assertEqual(ReaderState.FAILED, reader.state)
        self.assertIs(err, self.assertRaises(KeyError, reader.close))

    def test_visitor_must_not_reenter(self) -> None:
        class Reenter(StreamVisitor):
            reader: StreamReader

            def on_preamble(self, preamble: records.Preamble) -> None:
                self.reader.get_buffer()

        visitor = Reenter()
        reader = StreamReader(visitor)
        visitor.reader = reader
        self.assertRaises(RuntimeError, reader.feed, self.stream.data)

    def test_close_in_tail_is_fine(self) -> None:
        reader = StreamReader(StreamVisitor())
        reader.feed(self.stream.data)
        reader.close()
        reader.close()
        self.assertEqual(ReaderState.TAIL, reader.state)
