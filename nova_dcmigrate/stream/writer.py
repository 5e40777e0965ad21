"""Encoder for the precopy migration stream a proxy re-emits.

The merging agent forwards the source's header, configuration, commands and
START(ram) verbatim but emits RAM pages in its own PART/END sections, with
the source's ``ram`` section id and its *own* CONTINUE state (reference
``qemu-migration-stream.md`` section 2.3 and section 7 item 4): the
destination's "last block" persists across sections, so a re-encoder that
dropped, re-ordered or injected pages cannot reuse the source's CONTINUE
bits.  With ``use_continue`` it sets CONTINUE exactly as QEMU does, so a
stream decoded and re-encoded unchanged is byte-identical (checked on the
recorded QEMU 10.0 streams).
"""

from __future__ import annotations

from nova_dcmigrate.stream import constants as c
from nova_dcmigrate.stream import exception
from nova_dcmigrate.stream import records

_pack_be64 = c.BE64.pack
_EOS = c.BE64.pack(c.RAM_FLAG_EOS)
_ZERO_FILL = b"\x00"


class StreamWriter:
    """Appends stream elements to an internal buffer.

    Call :meth:`take` to collect the bytes produced so far.  Misuse (pages
    outside a section, sections before :meth:`ram_start`, wrong page size)
    raises :class:`ValueError`; pages for blocks or offsets START(ram) did
    not announce raise :class:`UnknownBlockError` /
    :class:`PageOutOfRangeError`, with ``offset`` the output position.

    :param use_continue: set CONTINUE on records for the same block as the
        previous record this writer emitted (saves the idstr, 7 bytes per
        ``pc.ram`` page); False always sends the idstr.
    """

    def __init__(self, *, use_continue: bool = True) -> None:
        self._buf = bytearray()
        self._taken = 0
        self._use_continue = use_continue
        self._blocks: dict[str, records.RamBlock] = {}
        self._idstrs: dict[str, bytes] = {}
        self._section_id: int | None = None
        self._section_kind = 0
        self._last_block: str | None = None

    @property
    def offset(self) -> int:
        """Total bytes produced, including those already taken."""
        return self._taken + len(self._buf)

    @property
    def section_kind(self) -> int:
        """Type byte of the open section (PART or END), 0 if none."""
        return self._section_kind

    @property
    def ram_started(self) -> bool:
        return self._section_id is not None

    def raw(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes verbatim."""
        self._buf += data

    def preamble(self, preamble: records.Preamble) -> None:
        """Append the header and configuration section verbatim."""
        self._buf += preamble.raw

    def command(self, cmd: int, data: bytes = b"") -> None:
        """Append a COMMAND element."""
        if not 0 <= cmd <= 0xFFFF or len(data) > 0xFFFF:
            raise ValueError("command %d with %d bytes of data does not fit"
                             % (cmd, len(data)))
        self._buf += c.COMMAND_HEADER.pack(c.SECTION_COMMAND, cmd, len(data))
        self._buf += data

    def ram_start(self, start: records.RamStart) -> None:
        """Append START(ram) verbatim and adopt its blocks and section id."""
        self._buf += start.raw
        self._blocks = {block.name: block for block in start.blocks}
        self._idstrs = {}
        for block in start.blocks:
            name = block.name.encode("utf-8", "surrogateescape")
            self._idstrs[block.name] = bytes([len(name)]) + name
        self._section_id = start.section_id
        self._last_block = None

    def begin_section(self, kind: int) -> None:
        """Open a PART or END(ram) section (``kind`` is the type byte)."""
        if self._section_id is None:
            raise ValueError("begin_section() before ram_start()")
        if self._section_kind:
            raise ValueError("begin_section() inside an open section")
        if kind != c.SECTION_PART and kind != c.SECTION_END:
            raise ValueError("section kind must be PART or END, not %r"
                             % kind)
        self._buf += c.SECTION_HEADER.pack(kind, self._section_id)
        self._section_kind = kind

    def _header(self, block: records.RamBlock | str, page: int,
                flag: int) -> None:
        if not self._section_kind:
            raise ValueError("RAM record outside a PART/END section")
        name = block if isinstance(block, str) else block.name
        known = self._blocks.get(name)
        if known is None:
            raise exception.UnknownBlockError(
                offset=self.offset, block=name,
                record=c.RAM_FLAG_NAMES[flag],
                reason="cannot write a RAM record for block %r, which "
                "START(ram) did not announce" % name)
        addr = page << c.PAGE_BITS
        if page < 0 or addr >= known.used_length:
            raise exception.PageOutOfRangeError(
                offset=self.offset, block=name, page_offset=addr,
                used_length=known.used_length, record=c.RAM_FLAG_NAMES[flag],
                reason="cannot write page %d of block %r: offset %#x is "
                "past the block end (%#x)"
                % (page, name, addr, known.used_length))
        if self._use_continue and name == self._last_block:
            self._buf += _pack_be64(addr | flag | c.RAM_FLAG_CONTINUE)
        else:
            self._buf += _pack_be64(addr | flag)
            self._buf += self._idstrs[name]
            self._last_block = name

    def page(self, block: records.RamBlock | str, page: int,
             data: bytes | bytearray | memoryview) -> None:
        """Append a PAGE record for ``page`` (index) of ``block``."""
        if len(data) != c.PAGE_SIZE:
            raise ValueError("page data must be %d bytes, not %d"
                             % (c.PAGE_SIZE, len(data)))
        self._header(block, page, c.RAM_FLAG_PAGE)
        self._buf += data

    def zero(self, block: records.RamBlock | str, page: int) -> None:
        """Append a ZERO record (fill byte 0) for ``page`` of ``block``."""
        self._header(block, page, c.RAM_FLAG_ZERO)
        self._buf += _ZERO_FILL

    def native_target(self, block: records.RamBlock
                      ) -> tuple[bytearray, bytes, bool] | None:
        """For a native encoder appending records of ``block``: the buffer,
        the block's idstr record prefix and whether the next record may
        set CONTINUE; None when it must use :meth:`page`/:meth:`zero`.

        After appending, call :meth:`native_appended`.
        """
        if not self._section_kind or not self._use_continue or \
                self._blocks.get(block.name) != block:
            return None
        return (self._buf, self._idstrs[block.name],
                block.name == self._last_block)

    def native_appended(self, block: records.RamBlock) -> None:
        """A native encoder appended records of ``block``."""
        self._last_block = block.name

    def end_section(self) -> None:
        """Close the open section with EOS and its footer."""
        if not self._section_kind:
            raise ValueError("end_section() without begin_section()")
        self._buf += _EOS
        self._buf += c.FOOTER.pack(c.SECTION_FOOTER, self._section_id)
        self._section_kind = 0

    def tail(self, data: bytes | bytearray | memoryview) -> None:
        """Append opaque bytes after the END(ram) section."""
        self._buf += data

    def pending(self) -> int:
        """Bytes produced and not yet taken."""
        return len(self._buf)

    def take(self) -> bytes:
        """Return the bytes produced so far and clear the buffer."""
        data = bytes(self._buf)
        self._taken += len(data)
        self._buf.clear()
        return data
