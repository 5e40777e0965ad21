"""Synthetic QEMU precopy migration streams for tests.

Builds complete, valid streams shaped like QEMU 10.x's output (reference
``qemu-migration-stream.md`` section 1.4): header + configuration,
OPEN_RETURN_PATH + PING, START(ram) with a realistic block list, PART
sections of PAGE/ZERO records, optional SWITCHOVER_START, END(ram), and a
tail of one fake FULL section, EOF and a VMDESCRIPTION.  Alongside the
bytes it returns what the destination's RAM must hold afterwards (last
write wins, section 2.1), so tests of any agent can check end results.

Typical use::

    s = streamgen.build_stream(writes=[("pc.ram", 0, b"x" * 4096),
                                       ("pc.ram", 1, None)])   # None: ZERO
    decoded = streamgen.decode(s.data)
    assert decoded.final == s.final

Also here: element encoders for hand-made (malformed) streams, visitors that
collect memory, events or re-encode, and a random write generator.
"""

from __future__ import annotations

import dataclasses
import json
import random
import struct
from typing import Iterable, Mapping, Sequence

from nova_dcmigrate.stream import constants as c
from nova_dcmigrate.stream import records
from nova_dcmigrate.stream import StreamReader
from nova_dcmigrate.stream import StreamVisitor
from nova_dcmigrate.stream import StreamWriter

ZERO_PAGE = bytes(c.PAGE_SIZE)

#: Block layout of a small ``pc-i440fx`` guest (reference section 1.5),
#: with an 8 MiB ``pc.ram`` to keep tests fast.
DEFAULT_BLOCKS: dict[str, int] = {
    "pc.ram": 8 << 20,
    "/rom@etc/acpi/tables": 0x20000,
    "pc.bios": 0x40000,
    "pc.rom": 0x20000,
    "/rom@etc/table-loader": 0x1000,
    "/rom@etc/acpi/rsdp": 0x1000,
}
DEFAULT_MACHINE = "pc-i440fx-10.0"
#: QEMU 10.0 assigns ``ram`` section id 1 for a plain ``pc`` guest.
DEFAULT_SECTION_ID = 1

#: (block name, page index, data or None for a ZERO record)
Write = tuple[str, int, "bytes | None"]
#: Final memory: block name -> page index -> 4096 bytes.
Memory = dict[str, dict[int, bytes]]


# -- element encoders ---------------------------------------------------------

def encode_subsection(name: str, payload: bytes, version: int = 1) -> bytes:
    """A configuration subsection: ``0x05, len, name, be32 version, data``."""
    raw = name.encode()
    return (bytes([c.SECTION_SUBSECTION, len(raw)]) + raw
            + struct.pack(">I", version) + payload)


def encode_capabilities(capabilities: Sequence[str]) -> bytes:
    payload = struct.pack(">I", len(capabilities)) + b"".join(
        bytes([len(cap)]) + cap.encode() for cap in capabilities)
    return encode_subsection(c.CONFIG_SUBSECTION_CAPABILITIES, payload)


def encode_preamble(machine_type: str = DEFAULT_MACHINE,
                    capabilities: Sequence[str] = (), *,
                    target_page_bits: int | None = None,
                    uuid: bytes | None = None,
                    extra: bytes = b"") -> bytes:
    """Header plus configuration section, subsections in QEMU's order."""
    name = machine_type.encode()
    out = struct.pack(">IIBI", c.FILE_MAGIC, c.FILE_VERSION,
                      c.SECTION_CONFIGURATION, len(name)) + name
    if target_page_bits is not None:
        out += encode_subsection(c.CONFIG_SUBSECTION_TARGET_PAGE_BITS,
                                 struct.pack(">I", target_page_bits))
    if capabilities:
        out += encode_capabilities(capabilities)
    if uuid is not None:
        out += encode_subsection(c.CONFIG_SUBSECTION_UUID, uuid)
    return out + extra


def make_preamble(machine_type: str = DEFAULT_MACHINE,
                  capabilities: Sequence[str] = (), *,
                  target_page_bits: int | None = None,
                  uuid: bytes | None = None) -> records.Preamble:
    raw = encode_preamble(machine_type, capabilities,
                          target_page_bits=target_page_bits, uuid=uuid)
    return records.Preamble(machine_type, tuple(capabilities), raw)


def encode_command(cmd: int, data: bytes = b"") -> bytes:
    return struct.pack(">BHH", c.SECTION_COMMAND, cmd, len(data)) + data


def encode_ping(value: int = 1) -> bytes:
    return encode_command(c.CMD_PING, struct.pack(">I", value))


def encode_section_header(kind: int, section_id: int,
                          idstr: str | None = None, instance_id: int = 0,
                          version_id: int = 4) -> bytes:
    """START/FULL header when ``idstr`` is given, else PART/END header."""
    out = struct.pack(">BI", kind, section_id)
    if idstr is not None:
        raw = idstr.encode()
        out += bytes([len(raw)]) + raw + struct.pack(">II", instance_id,
                                                     version_id)
    return out


def encode_footer(section_id: int) -> bytes:
    return struct.pack(">BI", c.SECTION_FOOTER, section_id)


def encode_record(flags: int, addr: int = 0, idstr: str | None = None,
                  payload: bytes = b"") -> bytes:
    """A raw RAM record: ``be64 addr|flags``, optional idstr, payload."""
    out = struct.pack(">Q", addr | flags)
    if idstr is not None:
        raw = idstr.encode()
        out += bytes([len(raw)]) + raw
    return out + payload


def block_list(blocks: Mapping[str, int] | Sequence[records.RamBlock],
               ignore_shared: bool = False) -> tuple[records.RamBlock, ...]:
    """Normalise ``{name: length}`` into RamBlocks (addresses made up)."""
    if isinstance(blocks, Mapping):
        out = []
        addr = 0
        for i, (name, length) in enumerate(blocks.items()):
            out.append(records.RamBlock(i, name, length,
                                        addr if ignore_shared else None))
            addr += 1 << 32
        return tuple(out)
    return tuple(blocks)


def encode_ram_start(blocks: Mapping[str, int] | Sequence[records.RamBlock]
                     = DEFAULT_BLOCKS, *,
                     section_id: int = DEFAULT_SECTION_ID,
                     ignore_shared: bool = False, instance_id: int = 0,
                     version_id: int = 4, total: int | None = None) -> bytes:
    """START(ram) with its MEM_SIZE block list, EOS and footer."""
    blist = block_list(blocks, ignore_shared)
    if total is None:
        total = sum(b.used_length for b in blist)
    out = encode_section_header(c.SECTION_START, section_id, c.RAM_IDSTR,
                                instance_id, version_id)
    out += struct.pack(">Q", total | c.RAM_FLAG_MEM_SIZE)
    for b in blist:
        raw = b.name.encode()
        out += bytes([len(raw)]) + raw + struct.pack(">Q", b.used_length)
        if ignore_shared:
            out += struct.pack(">Q", b.addr or 0)
    out += struct.pack(">Q", c.RAM_FLAG_EOS)
    return out + encode_footer(section_id)


def make_ram_start(blocks: Mapping[str, int] | Sequence[records.RamBlock]
                   = DEFAULT_BLOCKS, *,
                   section_id: int = DEFAULT_SECTION_ID,
                   ignore_shared: bool = False) -> records.RamStart:
    blist = block_list(blocks, ignore_shared)
    raw = encode_ram_start(blist, section_id=section_id,
                           ignore_shared=ignore_shared)
    return records.RamStart(
        section_id=section_id, instance_id=0, version_id=4,
        total_bytes=sum(b.used_length for b in blist), blocks=blist,
        ignore_shared=ignore_shared, raw=raw)


def fake_tail(section_id: int = 2) -> bytes:
    """FULL(timer) device section, EOF and a VMDESCRIPTION, as after END."""
    full = (encode_section_header(c.SECTION_FULL, section_id, "timer", 0, 2)
            + bytes(range(24)) + encode_footer(section_id))
    desc = json.dumps({"page_size": c.PAGE_SIZE, "devices": [
        {"name": "timer", "instance_id": 0, "vmsd_name": "timer",
         "version": 2}]}).encode()
    return (full + bytes([c.SECTION_EOF, c.SECTION_VMDESCRIPTION])
            + struct.pack(">I", len(desc)) + desc)


# -- page data ----------------------------------------------------------------

def page_data(rng: random.Random) -> bytes:
    """A distinct-looking page: random 64 bytes repeated (cheap to make)."""
    return rng.randbytes(64) * (c.PAGE_SIZE // 64)


def random_writes(rng: random.Random,
                  blocks: Mapping[str, int] = DEFAULT_BLOCKS,
                  count: int = 64, *, zero_ratio: float = 0.3,
                  rewrite_ratio: float = 0.2) -> list[Write]:
    """Random writes over ``blocks``; some pages are written repeatedly."""
    names = list(blocks)
    writes: list[Write] = []
    for _ in range(count):
        if writes and rng.random() < rewrite_ratio:
            name, page, _ = rng.choice(writes)
        else:
            name = rng.choice(names)
            page = rng.randrange(-(-blocks[name] // c.PAGE_SIZE))
        data = None if rng.random() < zero_ratio else page_data(rng)
        writes.append((name, page, data))
    return writes


def apply_writes(blocks: Iterable[str], writes: Iterable[Write]) -> Memory:
    """Final memory after ``writes`` (last write wins; ZERO = zero page)."""
    final: Memory = {name: {} for name in blocks}
    for name, page, data in writes:
        final[name][page] = ZERO_PAGE if data is None else bytes(data)
    return final


# -- whole streams ------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SyntheticStream:
    """A generated stream and what a destination must end up with.

    :ivar data: the complete stream.
    :ivar final: expected RAM per block (only written pages appear).
    :ivar preamble: the header/configuration as a record.
    :ivar ram_start: START(ram) as a record.
    :ivar pages: PAGE records in the stream.
    :ivar zero_pages: ZERO records in the stream.
    :ivar sections: PART + END(ram) sections.
    :ivar tail: the bytes after the END(ram) footer.
    :ivar ram_offset: offset of the first PART/END(ram) section (or of the
        command before it).
    """

    data: bytes
    final: Memory
    preamble: records.Preamble
    ram_start: records.RamStart
    pages: int
    zero_pages: int
    sections: int
    tail: bytes
    ram_offset: int

    @property
    def tail_offset(self) -> int:
        return len(self.data) - len(self.tail)


def build_stream(blocks: Mapping[str, int] | None = None,
                 writes: Sequence[Write] | None = None, *,
                 machine_type: str = DEFAULT_MACHINE,
                 capabilities: Sequence[str] = (),
                 section_id: int = DEFAULT_SECTION_ID,
                 records_per_section: int = 16,
                 use_continue: bool = True,
                 switchover_start: bool = True,
                 ping_between: bool = False,
                 tail: bytes | None = None,
                 seed: int = 0) -> SyntheticStream:
    """Build a complete valid stream.

    :param blocks: ``{name: used_length}``; default :data:`DEFAULT_BLOCKS`.
    :param writes: records in order, ``(block, page, data | None)``; None
        data makes a ZERO record.  Default: 40 random writes from ``seed``.
    :param records_per_section: records per PART; the last chunk goes into
        END(ram) (an empty END if there are no writes).
    :param use_continue: passed to the StreamWriter.
    :param switchover_start: emit SWITCHOVER_START before END (10.0+).
    :param ping_between: emit a PING between PART sections.
    :param tail: bytes after END(ram); default :func:`fake_tail`.
    """
    if blocks is None:
        blocks = DEFAULT_BLOCKS
    if writes is None:
        writes = random_writes(random.Random(seed), blocks, 40)
    ignore_shared = c.CAPABILITY_IGNORE_SHARED in capabilities
    preamble = make_preamble(machine_type, capabilities)
    start = make_ram_start(blocks, section_id=section_id,
                           ignore_shared=ignore_shared)
    tail = fake_tail((section_id + 1) & 0xFFFFFFFF) if tail is None else tail
    w = StreamWriter(use_continue=use_continue)
    w.preamble(preamble)
    w.command(c.CMD_OPEN_RETURN_PATH)
    w.command(c.CMD_PING, struct.pack(">I", 1))
    w.ram_start(start)
    ram_offset = w.offset
    step = max(1, records_per_section)
    chunks = [writes[i:i + step] for i in range(0, len(writes), step)]
    if not chunks:
        chunks = [[]]
    pages = zeros = 0
    for i, chunk in enumerate(chunks):
        last = i == len(chunks) - 1
        if last and switchover_start:
            w.command(c.CMD_SWITCHOVER_START)
        elif i and ping_between:
            w.command(c.CMD_PING, struct.pack(">I", i + 1))
        w.begin_section(c.SECTION_END if last else c.SECTION_PART)
        for name, page, data in chunk:
            if data is None:
                w.zero(name, page)
                zeros += 1
            else:
                w.page(name, page, data)
                pages += 1
        w.end_section()
    w.tail(tail)
    return SyntheticStream(
        data=w.take(), final=apply_writes(blocks, writes), preamble=preamble,
        ram_start=start, pages=pages, zero_pages=zeros,
        sections=len(chunks), tail=tail, ram_offset=ram_offset)


# -- visitors and decoding ----------------------------------------------------

class MemoryVisitor(StreamVisitor):
    """Collects the final memory, commands and tail of a stream."""

    def __init__(self) -> None:
        self.preamble: records.Preamble | None = None
        self.ram_start: records.RamStart | None = None
        self.final: Memory = {}
        self.commands: list[tuple[int, bytes]] = []
        self.tail = bytearray()

    def on_preamble(self, preamble: records.Preamble) -> None:
        self.preamble = preamble

    def on_command(self, cmd: int, data: bytes, raw: bytes) -> None:
        self.commands.append((cmd, data))

    def on_ram_start(self, start: records.RamStart) -> None:
        self.ram_start = start
        self.final = {b.name: {} for b in start.blocks}

    def on_page(self, block: records.RamBlock, page: int,
                data: memoryview) -> None:
        self.final[block.name][page] = bytes(data)

    def on_zero(self, block: records.RamBlock, page: int) -> None:
        self.final[block.name][page] = ZERO_PAGE

    def on_tail(self, data: memoryview) -> None:
        self.tail += data


class EventRecorder(StreamVisitor):
    """Records every event as a comparable tuple (tail chunks merged)."""

    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []

    def on_preamble(self, preamble: records.Preamble) -> None:
        self.events.append(("preamble", preamble))

    def on_command(self, cmd: int, data: bytes, raw: bytes) -> None:
        self.events.append(("command", cmd, data, raw))

    def on_ram_start(self, start: records.RamStart) -> None:
        self.events.append(("ram_start", start))

    def on_section_begin(self, kind: int, section_id: int) -> None:
        self.events.append(("begin", kind, section_id))

    def on_page(self, block: records.RamBlock, page: int,
                data: memoryview) -> None:
        self.events.append(("page", block.name, page, bytes(data)))

    def on_zero(self, block: records.RamBlock, page: int) -> None:
        self.events.append(("zero", block.name, page))

    def on_section_end(self, kind: int, section_id: int) -> None:
        self.events.append(("end", kind, section_id))

    def on_tail(self, data: memoryview) -> None:
        if self.events and self.events[-1][0] == "tail":
            previous = self.events[-1][1]
            assert isinstance(previous, bytes)
            self.events[-1] = ("tail", previous + bytes(data))
        else:
            self.events.append(("tail", bytes(data)))


class ReencodeVisitor(StreamVisitor):
    """Copies a stream into a StreamWriter (its own CONTINUE state)."""

    def __init__(self, writer: StreamWriter) -> None:
        self.writer = writer

    def on_preamble(self, preamble: records.Preamble) -> None:
        self.writer.preamble(preamble)

    def on_command(self, cmd: int, data: bytes, raw: bytes) -> None:
        self.writer.command(cmd, data)

    def on_ram_start(self, start: records.RamStart) -> None:
        self.writer.ram_start(start)

    def on_section_begin(self, kind: int, section_id: int) -> None:
        self.writer.begin_section(kind)

    def on_page(self, block: records.RamBlock, page: int,
                data: memoryview) -> None:
        self.writer.page(block, page, data)

    def on_zero(self, block: records.RamBlock, page: int) -> None:
        self.writer.zero(block, page)

    def on_section_end(self, kind: int, section_id: int) -> None:
        self.writer.end_section()

    def on_tail(self, data: memoryview) -> None:
        self.writer.tail(data)


def feed_chunks(reader: StreamReader, data: bytes,
                sizes: Iterable[int] | int | None = None,
                close: bool = True) -> None:
    """Feed ``data`` through get_buffer/buffer_updated in chunks.

    :param sizes: one chunk size, an iterable of sizes (cycled through
        until the data ends), or None for a single chunk.
    """
    if sizes is None:
        sizes = [max(1, len(data))]
    elif isinstance(sizes, int):
        sizes = [sizes]
    sizes = [max(1, s) for s in sizes] or [1]
    pos = i = 0
    while pos < len(data):
        n = min(sizes[i % len(sizes)], len(data) - pos)
        i += 1
        view = reader.get_buffer(n)
        view[:n] = data[pos:pos + n]
        reader.buffer_updated(n)
        pos += n
    if close:
        reader.close()


@dataclasses.dataclass
class Decoded:
    reader: StreamReader
    visitor: MemoryVisitor

    @property
    def final(self) -> Memory:
        return self.visitor.final


def decode(data: bytes, chunk: int | Iterable[int] | None = None,
           **reader_kwargs: int) -> Decoded:
    """Parse a whole stream (and close it) with a MemoryVisitor."""
    visitor = MemoryVisitor()
    reader = StreamReader(visitor, **reader_kwargs)
    feed_chunks(reader, data, chunk)
    return Decoded(reader, visitor)


def reencode(data: bytes, *, use_continue: bool = True) -> bytes:
    """Decode ``data`` and re-encode it with a fresh StreamWriter."""
    writer = StreamWriter(use_continue=use_continue)
    reader = StreamReader(ReencodeVisitor(writer))
    reader.feed(data)
    reader.close()
    return writer.take()


def events(data: bytes, chunk: int | Iterable[int] | None = None,
           **reader_kwargs: int) -> tuple[list[tuple[object, ...]],
                                          BaseException | None]:
    """Event list and the error raised (if any) for ``data``."""
    recorder = EventRecorder()
    reader = StreamReader(recorder, **reader_kwargs)
    error: BaseException | None = None
    try:
        feed_chunks(reader, data, chunk)
    except Exception as err:  # callers compare errors across chunkings
        error = err
    return recorder.events, error
