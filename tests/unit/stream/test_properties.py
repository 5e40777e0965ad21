"""Property tests: round trips, chunking invariance, mutation fuzzing."""

from __future__ import annotations

import random
import struct

import hypothesis
from hypothesis import strategies as st
import testtools

from nova_dcmigrate.stream import constants as c
from nova_dcmigrate.stream import exception
from nova_dcmigrate.stream import StreamReader
from nova_dcmigrate.stream import StreamVisitor
from tests.unit.stream import streamgen

SETTINGS = hypothesis.settings(
    max_examples=100, deadline=None, database=None,
    suppress_health_check=[hypothesis.HealthCheck.too_slow,
                           hypothesis.HealthCheck.data_too_large])

NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789./@-_:\u00e9\u00df"
block_names = st.text(NAME_CHARS, min_size=1, max_size=40).filter(
    lambda name: len(name.encode()) <= 255 and name != "ram")


@st.composite
def stream_specs(draw: st.DrawFn) -> dict[str, object]:
    """Keyword arguments for streamgen.build_stream."""
    blocks = draw(st.dictionaries(
        block_names, st.integers(1, 40).map(lambda n: n * c.PAGE_SIZE),
        min_size=1, max_size=6))
    names = list(blocks)
    raw_writes = draw(st.lists(st.tuples(
        st.integers(0, len(names) - 1), st.integers(0, 10 ** 6),
        st.one_of(st.none(), st.integers(0, 255))), max_size=30))
    writes = []
    for i, (b, page, fill) in enumerate(raw_writes):
        name = names[b]
        page %= blocks[name] // c.PAGE_SIZE
        data = (None if fill is None
                else struct.pack(">I", i) + bytes([fill]) * (c.PAGE_SIZE - 4))
        writes.append((name, page, data))
    caps = [c.CAPABILITY_IGNORE_SHARED] if draw(st.booleans()) else []
    return dict(blocks=blocks, writes=writes, capabilities=caps,
                section_id=draw(st.integers(0, 2 ** 32 - 1)),
                records_per_section=draw(st.integers(1, 8)),
                use_continue=draw(st.booleans()),
                switchover_start=draw(st.booleans()),
                ping_between=draw(st.booleans()))


chunk_sizes = st.lists(st.integers(1, 9000), min_size=1, max_size=20)
buffer_sizes = st.sampled_from([1, 100, 4096, 1 << 20])


class TestRoundTrip(testtools.TestCase):

    @SETTINGS
    @hypothesis.given(stream_specs(), st.booleans())
    def test_writer_reader_round_trip(self, spec: dict[str, object],
                                      use_continue: bool) -> None:
        stream = streamgen.build_stream(**spec)  # type: ignore[arg-type]
        decoded = streamgen.decode(stream.data)
        self.assertEqual(stream.final, decoded.final)
        self.assertEqual(stream.pages, decoded.reader.pages)
        self.assertEqual(stream.zero_pages, decoded.reader.zero_pages)
        self.assertEqual(stream.sections, decoded.reader.sections)
        self.assertEqual(stream.tail, bytes(decoded.visitor.tail))
        self.assertEqual(stream.ram_start, decoded.reader.ram_start)
        # Re-encoding reproduces the bytes with the same CONTINUE policy and
        # the same events with either policy.
        again = streamgen.reencode(stream.data,
                                   use_continue=spec["use_continue"])
        self.assertEqual(stream.data, again)
        other = streamgen.reencode(stream.data, use_continue=use_continue)
        self.assertEqual(streamgen.events(stream.data),
                         streamgen.events(other))

    @SETTINGS
    @hypothesis.given(stream_specs(), chunk_sizes, buffer_sizes)
    def test_chunking_does_not_matter(self, spec: dict[str, object],
                                      sizes: list[int],
                                      buffer_size: int) -> None:
        stream = streamgen.build_stream(**spec)  # type: ignore[arg-type]
        whole, error = streamgen.events(stream.data)
        self.assertIsNone(error)
        chunked, error = streamgen.events(stream.data, sizes,
                                          buffer_size=buffer_size)
        self.assertIsNone(error)
        self.assertEqual(whole, chunked)


def _fuzz_base() -> streamgen.SyntheticStream:
    rng = random.Random(11)
    blocks = {"pc.ram": 0x8000, "/rom@etc/acpi/tables": 0x2000,
              "pc.rom": 0x1000}
    writes: list[streamgen.Write] = [("pc.ram", 0, None)]
    writes += [(rng.choice(list(blocks)), 0, None) for _ in range(8)]
    writes += [("pc.ram", 7, b"\x11" * 4096), ("pc.rom", 0, None),
               ("/rom@etc/acpi/tables", 1, b"\x22" * 4096),
               ("/rom@etc/acpi/tables", 0, None), ("pc.ram", 6, None)]
    return streamgen.build_stream(
        blocks, writes, capabilities=[c.CAPABILITY_IGNORE_SHARED],
        records_per_section=3, ping_between=True,
        tail=streamgen.fake_tail()[:64])


FUZZ = _fuzz_base()


@st.composite
def mutations(draw: st.DrawFn) -> bytes:
    """FUZZ.data with a few byte edits, mostly in the framing bytes."""
    data = bytearray(FUZZ.data)
    for _ in range(draw(st.integers(1, 4))):
        size = len(data)
        where = draw(st.one_of(
            st.integers(0, min(size, FUZZ.ram_offset + 64) - 1),
            st.integers(max(0, size - 300), size - 1),
            st.integers(0, size - 1)))
        action = draw(st.sampled_from(["set", "xor", "insert", "delete"]))
        value = draw(st.integers(0, 255))
        if action == "set":
            data[where] = value
        elif action == "xor":
            data[where] ^= 1 << (value % 8)
        elif action == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=9))
        elif len(data) > 1:
            del data[where:where + 1 + value % 8]
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    return bytes(data)


class TestFuzz(testtools.TestCase):

    def _check(self, data: bytes, sizes: list[int]) -> None:
        """Only StreamErrors, and the same outcome whatever the chunking."""
        whole, error = streamgen.events(data)
        if error is not None:
            self.assertIsInstance(error, exception.StreamError)
            self.assertIsInstance(error.offset, int)
            self.assertTrue(0 <= error.offset <= len(data))
            str(error)
        chunked, error2 = streamgen.events(data, sizes, buffer_size=64)
        self.assertEqual(whole, chunked)
        self.assertIs(type(error), type(error2))
        if error is not None:
            self.assertEqual(error.kwargs, error2.kwargs)

    def test_base_stream_is_valid(self) -> None:
        self.assertEqual(FUZZ.final, streamgen.decode(FUZZ.data).final)

    @SETTINGS
    @hypothesis.given(mutations(), chunk_sizes)
    def test_mutations_raise_only_stream_errors(self, data: bytes,
                                                sizes: list[int]) -> None:
        self._check(data, sizes)

    @SETTINGS
    @hypothesis.given(st.binary(max_size=400), chunk_sizes,
                      st.sampled_from([0, len(streamgen.encode_preamble()),
                                       FUZZ.ram_offset]))
    def test_garbage_after_valid_prefix(self, junk: bytes, sizes: list[int],
                                        keep: int) -> None:
        self._check(FUZZ.data[:keep] + junk, sizes)

    def test_random_mutations_fixed_seed(self) -> None:
        # A cheap, deterministic sweep of single-byte edits in the framing.
        rng = random.Random(1234)
        data = FUZZ.data
        for _ in range(3000):
            pos = rng.randrange(len(data))
            mutated = data[:pos] + bytes([rng.randrange(256)]) + data[pos + 1:]
            reader = StreamReader(StreamVisitor())
            try:
                reader.feed(mutated)
                reader.close()
            except exception.StreamError:
                pass
