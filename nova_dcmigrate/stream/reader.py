"""Incremental, validating parser of QEMU's precopy migration stream.

The agents sit on the live TCP stream between two QEMUs, so the parser is
push-based: the caller reads socket data straight into the reader's buffer
(:meth:`StreamReader.get_buffer` / :meth:`StreamReader.buffer_updated`),
forwards or drops it, and the reader reports elements to a
:class:`StreamVisitor`.  It keeps at most one partial element buffered,
which keeps a proxy's queue small (reference ``qemu-migration-stream.md``
section 5.3).

What is parsed and validated follows sections 1.2-1.5 and 2.1 of the
reference: header, configuration, commands, START(ram), PART/END(ram) with
their RAM records and footers.  Everything after the END(ram) footer (FULL
device sections, EOF, VMDESCRIPTION) is opaque tail, because FULL sections
have no length framing (section 1.3) and a proxy forwards them verbatim
(section 2.3).  Anything a proxy cannot follow (postcopy, XBZRLE,
compression, multifd, other iterable sections; section 2.3) is rejected.

Page records are the hot path: at 10 GbE a proxy sees ~300k pages/s, so
``PAGE|CONTINUE`` and ``ZERO|CONTINUE`` records are decoded inline with
cached locals and no per-record objects besides the page's memoryview.
"""

from __future__ import annotations

from typing import Any

from nova_dcmigrate.stream import constants as c
from nova_dcmigrate.stream import exception
from nova_dcmigrate.stream import fastpath
from nova_dcmigrate.stream import records

_unpack_be64 = c.BE64.unpack_from
_unpack_be32 = c.BE32.unpack_from
_unpack_be16 = c.BE16.unpack_from

# Hot-path record words and sizes.
_PAGE_CONT = c.RAM_FLAG_PAGE | c.RAM_FLAG_CONTINUE
_ZERO_CONT = c.RAM_FLAG_ZERO | c.RAM_FLAG_CONTINUE
_PAGE_REC = 8 + c.PAGE_SIZE
_ZERO_REC = 9
_FLAG_BITS = c.PAGE_MASK
_UNKNOWN_FLAG_BITS = c.PAGE_MASK & ~c.RAM_FLAGS_KNOWN
#: More RAM blocks than any real VM has; bounds START(ram) buffering.
_MAX_BLOCKS = 4096


class StreamVisitor:
    """Receives the elements a :class:`StreamReader` parses.

    Subclass it and override what you need; every method is a no-op here.
    Visitor methods must not call back into the reader.  Memoryviews passed
    in are only valid during the call: copy (``bytes(data)``) to keep them.
    An exception raised by a visitor method propagates out of
    :meth:`StreamReader.buffer_updated` and leaves the reader FAILED.

    ``fast_records`` (optional, set before the reader is made): a callable
    ``(buf, pos, end, block) -> (pos, pages, zeros)`` that does this
    visitor's work for a run of ``PAGE|CONTINUE``/``ZERO|CONTINUE``
    records of ``block`` at once (see :mod:`fastpath`) and stops before
    any record it does not take; the reader parses that one in Python.
    """

    fast_records: Any = None

    def on_preamble(self, preamble: records.Preamble) -> None:
        """Header and configuration section were parsed."""

    def on_command(self, cmd: int, data: bytes, raw: bytes) -> None:
        """A COMMAND: ``cmd`` number, its ``data``, all its ``raw`` bytes."""

    def on_ram_start(self, start: records.RamStart) -> None:
        """START(ram) with its block list was parsed (footer included)."""

    def on_section_begin(self, kind: int, section_id: int) -> None:
        """A PART or END(ram) section header (``kind`` is the type byte)."""

    def on_page(self, block: records.RamBlock, page: int,
                data: memoryview) -> None:
        """A PAGE record: ``page`` index in ``block``, 4096-byte ``data``."""

    def on_zero(self, block: records.RamBlock, page: int) -> None:
        """A ZERO record (fill byte 0) for ``page`` of ``block``."""

    def on_section_end(self, kind: int, section_id: int) -> None:
        """The EOS record and footer of a PART/END(ram) were consumed."""

    def on_tail(self, data: memoryview) -> None:
        """Opaque bytes after the END(ram) footer; may be called many times."""


class _NeedMore(Exception):
    """Internal: the element at the cursor is not complete yet."""


class _Cursor:
    """Bounds-checked reads for the cold (non-page) elements.

    A short read raises :class:`_NeedMore`; the caller then retries the
    whole element once more bytes arrived, so checks run in byte order and
    the first error raised does not depend on how the input was chunked.
    """

    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf: bytearray, pos: int, end: int) -> None:
        self.buf = buf
        self.pos = pos
        self.end = end

    def _need(self, n: int) -> None:
        if self.end - self.pos < n:
            raise _NeedMore()

    def peek_u8(self) -> int:
        self._need(1)
        return self.buf[self.pos]

    def u8(self) -> int:
        self._need(1)
        value = self.buf[self.pos]
        self.pos += 1
        return value

    def be16(self) -> int:
        self._need(2)
        value: int
        (value,) = _unpack_be16(self.buf, self.pos)
        self.pos += 2
        return value

    def be32(self) -> int:
        self._need(4)
        value: int
        (value,) = _unpack_be32(self.buf, self.pos)
        self.pos += 4
        return value

    def be64(self) -> int:
        self._need(8)
        value: int
        (value,) = _unpack_be64(self.buf, self.pos)
        self.pos += 8
        return value

    def take(self, n: int) -> bytes:
        self._need(n)
        value = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return value


def _ascii(data: bytes) -> str | None:
    """Decode a printable-ASCII name, or return None."""
    if not data or any(b < 0x20 or b > 0x7E for b in data):
        return None
    return data.decode("ascii")


def _idstr(data: bytes) -> str:
    """Decode an idstr losslessly (the writer re-encodes it the same way)."""
    return data.decode("utf-8", "surrogateescape")


def _scan_only(native: Any) -> Any:
    """Fast path of the no-op visitor: validate and skip a record run."""
    scan = native.scan_records

    def fast(buf: bytearray, pos: int, end: int,
             block: records.RamBlock) -> tuple[int, int, int]:
        result: tuple[int, int, int] = scan(buf, pos, end, block.used_length)
        return result
    return fast


def record_name(flags: int) -> str:
    """Name of a RAM record type from its flag bits, CONTINUE ignored.

    :returns: e.g. ``"PAGE"``, or the flags in hex for invalid combinations.
    """
    base = flags & ~c.RAM_FLAG_CONTINUE
    name = c.RAM_FLAG_NAMES.get(base)
    return name if name is not None else "0x%03x" % flags


class StreamReader:
    """Push parser for one migration stream.

    Typical use (zero-copy from a socket)::

        reader = StreamReader(visitor)
        while True:
            view = reader.get_buffer()
            n = sock.recv_into(view)
            if not n:
                break
            reader.buffer_updated(n)   # visitor callbacks run here
            peer.sendall(view[:n])     # still valid until next get_buffer
        reader.close()

    :ivar state: a :class:`~nova_dcmigrate.stream.records.ReaderState`.
    :ivar preamble: the parsed :class:`Preamble`, once seen.
    :ivar ram_start: the parsed :class:`RamStart`, once seen.
    :ivar pages: PAGE records parsed.
    :ivar zero_pages: ZERO records parsed.
    :ivar sections: PART/END(ram) sections completed (footer consumed).

    Any error raised (a :class:`StreamError` or a visitor's exception)
    leaves the reader in state FAILED; every later call raises it again.
    """

    def __init__(self, visitor: StreamVisitor, *,
                 buffer_size: int = 1 << 20) -> None:
        if buffer_size < 1:
            raise ValueError("buffer_size must be positive")
        self._visitor = visitor
        self._buf = bytearray(buffer_size)
        self._mv = memoryview(self._buf)
        self._base = 0          # absolute stream offset of _buf[0]
        self._start = 0         # first unparsed byte in _buf
        self._end = 0           # end of received data in _buf
        self._parsing = False
        self._error: BaseException | None = None
        self.state = records.ReaderState.PREAMBLE
        self.preamble: records.Preamble | None = None
        self.ram_start: records.RamStart | None = None
        self.pages = 0
        self.zero_pages = 0
        self.sections = 0
        self._ignore_shared = False
        self._blocks: dict[bytes, records.RamBlock] = {}
        self._ram_id = -1
        self._last_block: records.RamBlock | None = None
        self._section_kind = 0   # PART/END while inside a ram section
        self._want_footer = False
        self._fast = visitor.fast_records
        if self._fast is None and type(visitor) is StreamVisitor and \
                fastpath.native is not None:
            self._fast = _scan_only(fastpath.native)

    # -- public API ---------------------------------------------------------

    @property
    def offset(self) -> int:
        """Stream bytes consumed (parsed) so far.

        Updated at element boundaries; inside ``on_page``/``on_zero`` it
        may still point at an earlier record of the same batch.
        """
        return self._base + self._start

    def get_buffer(self, min_size: int = 65536) -> memoryview:
        """Return writable free space of at least ``min_size`` bytes.

        This is the only call that moves buffered data: the unparsed
        remainder (at most one partial element) goes to the front, and the
        buffer grows if the remainder plus ``min_size`` does not fit.

        :raises StreamError: the error that made the reader FAILED.
        """
        self._check()
        if self._parsing:
            raise RuntimeError("StreamReader called from its own visitor")
        min_size = max(1, min_size)
        start, end = self._start, self._end
        if start == end:
            self._base += start
            self._start = self._end = start = end = 0
        if len(self._buf) - end < min_size:
            remainder = end - start
            if remainder + min_size <= len(self._buf):
                # memoryview assignment is a memmove: overlap is fine.
                self._mv[:remainder] = self._mv[start:end]
            else:
                size = max(2 * len(self._buf), remainder + min_size)
                buf = bytearray(size)
                buf[:remainder] = self._mv[start:end]
                self._buf = buf
                self._mv = memoryview(buf)
            self._base += start
            self._start, self._end = 0, remainder
            end = remainder
        return self._mv[end:]

    def buffer_updated(self, n: int) -> None:
        """Parse ``n`` bytes just written into the last :meth:`get_buffer`.

        Buffered data is not moved, so the caller may still use the view's
        first ``n`` bytes until the next :meth:`get_buffer`.

        :raises StreamError: on invalid input (the reader becomes FAILED).
        """
        self._check()
        if self._parsing:
            raise RuntimeError("StreamReader called from its own visitor")
        if n < 0 or n > len(self._buf) - self._end:
            raise ValueError("buffer_updated(%d): only %d bytes were free"
                             % (n, len(self._buf) - self._end))
        self._end += n
        self._parsing = True
        try:
            self._parse()
        except BaseException as err:
            self._fail(err)
            raise
        finally:
            self._parsing = False

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` into the buffer piecewise and parse it.

        :raises StreamError: on invalid input (the reader becomes FAILED).
        """
        self._check()
        view = memoryview(data).cast("B")
        pos, total = 0, len(view)
        while pos < total:
            free = self.get_buffer(min(total - pos, 1 << 16))
            n = min(len(free), total - pos)
            free[:n] = view[pos:pos + n]
            self.buffer_updated(n)
            pos += n

    def close(self) -> None:
        """Declare the end of input.

        :raises TruncatedStreamError: unless the END(ram) footer was seen.
        """
        self._check()
        if self.state != records.ReaderState.TAIL:
            err = self._truncated()
            self._fail(err)
            raise err

    # -- internals ------------------------------------------------------------

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def _fail(self, err: BaseException) -> None:
        self._error = err
        self.state = records.ReaderState.FAILED

    def _parse(self) -> None:
        state_ram = records.ReaderState.RAM
        while self._start < self._end:
            state = self.state
            if state == state_ram:
                if self._section_kind:
                    if self._want_footer:
                        done = self._parse_footer()
                    else:
                        done = self._parse_records()
                else:
                    done = self._parse_toplevel(pre_ram=False)
            elif state == records.ReaderState.TAIL:
                start, end = self._start, self._end
                self._start = end
                self._visitor.on_tail(self._mv[start:end])
                return
            elif state == records.ReaderState.PRE_RAM:
                done = self._parse_toplevel(pre_ram=True)
            else:
                done = self._parse_preamble()
            if not done:
                return

    # Errors ---------------------------------------------------------------

    def _at(self, pos: int) -> int:
        return self._base + pos

    def _malformed(self, pos: int, reason: str,
                   **kwargs: Any) -> exception.MalformedStreamError:
        return exception.MalformedStreamError(
            offset=self._at(pos), reason=reason, **kwargs)

    def _unsupported(self, pos: int, feature: str, reason: str,
                     **kwargs: Any) -> exception.UnsupportedStreamError:
        return exception.UnsupportedStreamError(
            offset=self._at(pos), feature=feature, reason=reason, **kwargs)

    def _out_of_range(self, pos: int, flags: int, block: records.RamBlock,
                      addr: int) -> exception.PageOutOfRangeError:
        return exception.PageOutOfRangeError(
            offset=self._at(pos), record=record_name(flags),
            block=block.name, page_offset=addr,
            used_length=block.used_length,
            reason=("RAM %s record for block %r at offset %#x is past "
                    "the block end (%#x)"
                    % (record_name(flags), block.name, addr,
                       block.used_length)))

    def _truncated(self) -> exception.TruncatedStreamError:
        pos, end = self._start, self._end
        have = end - pos
        kwargs: dict[str, Any] = {}
        state = self.state
        if state == records.ReaderState.PREAMBLE:
            what = "inside the header/configuration section"
        elif self._section_kind and self._want_footer:
            what = "inside the footer of a %s(ram) section" % (
                c.SECTION_NAMES[self._section_kind])
        elif self._section_kind:
            if have == 0:
                what = "inside a %s(ram) section, before its EOS record" % (
                    c.SECTION_NAMES[self._section_kind])
            elif have < 8:
                what = "inside a RAM record header"
            else:
                (word,) = _unpack_be64(self._buf, pos)
                kwargs["record"] = record_name(word & _FLAG_BITS)
                if (word & c.RAM_FLAG_CONTINUE and
                        self._last_block is not None):
                    kwargs["block"] = self._last_block.name
                what = "inside a RAM %s record" % kwargs["record"]
        elif have == 0:
            what = ("before START(ram)" if state == records.ReaderState.PRE_RAM
                    else "before the END(ram) section")
        else:
            kind = self._buf[pos]
            what = "inside a %s element" % c.SECTION_NAMES.get(
                kind, "0x%02x" % kind)
        return exception.TruncatedStreamError(
            offset=self._at(pos),
            reason="input ended %s (%d bytes of it received)" % (what, have),
            **kwargs)

    # Preamble -------------------------------------------------------------

    def _parse_preamble(self) -> bool:
        start = self._start
        cur = _Cursor(self._buf, start, self._end)
        try:
            magic = cur.be32()
            if magic != c.FILE_MAGIC:
                raise self._malformed(
                    start, "bad magic %#010x, expected %#010x ('QEVM')"
                    % (magic, c.FILE_MAGIC))
            version = cur.be32()
            if version != c.FILE_VERSION:
                raise self._malformed(
                    start + 4, "unsupported stream version %d, expected %d"
                    % (version, c.FILE_VERSION))
            conf = cur.pos
            kind = cur.u8()
            if kind != c.SECTION_CONFIGURATION:
                raise self._malformed(
                    conf, "expected the configuration section (0x07), "
                    "found byte %#04x" % kind)
            length = cur.be32()
            if not 0 < length <= c.MAX_MACHINE_TYPE_LEN:
                raise self._malformed(
                    conf, "machine type length %d out of range (1..%d)"
                    % (length, c.MAX_MACHINE_TYPE_LEN))
            machine_type = _ascii(cur.take(length))
            if machine_type is None:
                raise self._malformed(
                    conf, "machine type is not printable ASCII")
            capabilities: list[str] = []
            while cur.peek_u8() == c.SECTION_SUBSECTION:
                self._parse_config_subsection(cur, capabilities)
        except _NeedMore:
            return False
        raw = bytes(self._buf[start:cur.pos])
        self._start = cur.pos
        self._ignore_shared = c.CAPABILITY_IGNORE_SHARED in capabilities
        self.preamble = records.Preamble(
            machine_type=machine_type, capabilities=tuple(capabilities),
            raw=raw)
        self.state = records.ReaderState.PRE_RAM
        self._visitor.on_preamble(self.preamble)
        return True

    def _parse_config_subsection(self, cur: _Cursor,
                                 capabilities: list[str]) -> None:
        sub = cur.pos
        cur.u8()
        name = _ascii(cur.take(cur.u8()))
        if name is None:
            raise self._malformed(
                sub, "configuration subsection name is not printable ASCII")
        version = cur.be32()
        if name == c.CONFIG_SUBSECTION_CAPABILITIES:
            self._check_subsection_version(sub, name, version)
            count = cur.be32()
            if count > c.MAX_CAPABILITIES:
                raise self._malformed(
                    sub, "configuration lists %d capabilities (at most %d "
                    "expected)" % (count, c.MAX_CAPABILITIES))
            for _ in range(count):
                cap_pos = cur.pos
                cap = _ascii(cur.take(cur.u8()))
                if cap is None:
                    raise self._malformed(
                        cap_pos, "capability name is not printable ASCII")
                if cap != c.CAPABILITY_IGNORE_SHARED:
                    raise self._unsupported(
                        cap_pos, cap,
                        "the source validates capability '%s', which a "
                        "stream-level proxy cannot handle" % cap)
                capabilities.append(cap)
        elif name == c.CONFIG_SUBSECTION_TARGET_PAGE_BITS:
            self._check_subsection_version(sub, name, version)
            bits = cur.be32()
            if bits != c.PAGE_BITS:
                raise self._unsupported(
                    sub, c.FEATURE_TARGET_PAGE_BITS,
                    "target page bits %d, only %d (4 KiB pages) is "
                    "supported" % (bits, c.PAGE_BITS))
        elif name == c.CONFIG_SUBSECTION_UUID:
            self._check_subsection_version(sub, name, version)
            cur.take(16)
        else:
            raise self._unsupported(
                sub, name, "unknown configuration subsection '%s'" % name)

    def _check_subsection_version(self, pos: int, name: str,
                                  version: int) -> None:
        if version != 1:
            raise self._malformed(
                pos, "configuration subsection '%s' has version %d, "
                "expected 1" % (name, version))

    # Top level: commands and section headers ------------------------------

    def _parse_toplevel(self, pre_ram: bool) -> bool:
        pos = self._start
        kind = self._buf[pos]
        if kind == c.SECTION_COMMAND:
            return self._parse_command()
        if kind == c.SECTION_START:
            return self._parse_start(pre_ram)
        where = "START(ram)" if pre_ram else "the END(ram) section"
        if kind == c.SECTION_PART or kind == c.SECTION_END:
            name = c.SECTION_NAMES[kind]
            if pre_ram:
                raise self._malformed(
                    pos, "%s section before START(ram)" % name)
            if self._end - pos < 5:
                return False
            (section_id,) = _unpack_be32(self._buf, pos + 1)
            if section_id != self._ram_id:
                raise self._malformed(
                    pos, "wrong section id %d in %s section, expected the "
                    "ram section id %d" % (section_id, name, self._ram_id),
                    section_id=section_id)
            self._start = pos + 5
            self._section_kind = kind
            self._visitor.on_section_begin(kind, section_id)
            return True
        if kind == c.SECTION_FULL:
            if pre_ram:
                raise self._unsupported(
                    pos, c.FEATURE_EARLY_SETUP,
                    "FULL device section before START(ram) (QEMU 10.x "
                    "early_setup state, e.g. virtio-mem) cannot be "
                    "skipped without its VMStateDescription")
            raise self._malformed(pos, "FULL section before END(ram)")
        if kind == c.SECTION_EOF:
            raise self._malformed(pos, "EOF marker (0x00) before %s" % where)
        known = c.SECTION_NAMES.get(kind)
        if known is not None:
            raise self._malformed(pos, "unexpected %s section before %s"
                                  % (known, where))
        raise self._malformed(pos, "unknown section type %#04x before %s"
                              % (kind, where))

    def _parse_command(self) -> bool:
        pos, end = self._start, self._end
        if end - pos < 5:
            return False
        _, cmd, length = c.COMMAND_HEADER.unpack_from(self._buf, pos)
        expected = c.SUPPORTED_COMMAND_LENGTHS.get(cmd)
        if expected is None:
            feature = c.UNSUPPORTED_COMMAND_FEATURES.get(cmd)
            if feature is not None:
                raise self._unsupported(
                    pos, feature, "command %s (%d) is not supported by a "
                    "precopy stream-level proxy"
                    % (c.COMMAND_NAMES[cmd], cmd), command=cmd)
            raise self._malformed(pos, "unknown command number %d" % cmd,
                                  command=cmd)
        if length != expected:
            raise self._malformed(
                pos, "command %s has data length %d, expected %d"
                % (c.COMMAND_NAMES[cmd], length, expected), command=cmd)
        if end - pos < 5 + length:
            return False
        raw = bytes(self._buf[pos:pos + 5 + length])
        self._start = pos + 5 + length
        self._visitor.on_command(cmd, raw[5:], raw)
        return True

    def _parse_start(self, pre_ram: bool) -> bool:
        start = self._start
        cur = _Cursor(self._buf, start, self._end)
        try:
            cur.u8()
            section_id = cur.be32()
            idstr = _idstr(cur.take(cur.u8()))
            if idstr != c.RAM_IDSTR:
                raise self._unsupported(
                    start, c.FEATURE_ITERABLE_SECTION,
                    "iterable section %r besides 'ram' (block migration, "
                    "dirty bitmaps, VFIO) is not supported" % idstr,
                    idstr=idstr)
            if not pre_ram:
                raise self._malformed(start, "second START(ram) section")
            instance_id = cur.be32()
            version_id = cur.be32()
            rec = cur.pos
            word = cur.be64()
            flags = word & _FLAG_BITS
            if flags != c.RAM_FLAG_MEM_SIZE:
                raise self._malformed(
                    rec, "START(ram) data must begin with a MEM_SIZE record, "
                    "found record %s" % record_name(flags),
                    record=record_name(flags))
            total = word - flags
            remaining = total
            blocks: list[records.RamBlock] = []
            by_name: dict[bytes, records.RamBlock] = {}
            while remaining > 0:
                entry = cur.pos
                raw_name = cur.take(cur.u8())
                used_length = cur.be64()
                addr = cur.be64() if self._ignore_shared else None
                name = _idstr(raw_name)
                if not raw_name:
                    raise self._malformed(entry, "empty RAM block name in "
                                          "START(ram)")
                if raw_name in by_name:
                    raise self._malformed(
                        entry, "RAM block %r announced twice" % name,
                        block=name)
                if used_length == 0:
                    raise self._malformed(
                        entry, "RAM block %r has length 0" % name,
                        block=name)
                if used_length > remaining:
                    raise self._malformed(
                        entry, "RAM block %r length %#x does not fit the "
                        "MEM_SIZE total %#x (%#x left)"
                        % (name, used_length, total, remaining), block=name)
                if len(blocks) >= _MAX_BLOCKS:
                    raise self._malformed(
                        entry, "more than %d RAM blocks" % _MAX_BLOCKS)
                block = records.RamBlock(len(blocks), name, used_length, addr)
                blocks.append(block)
                by_name[raw_name] = block
                remaining -= used_length
            eos = cur.pos
            word = cur.be64()
            if word != c.RAM_FLAG_EOS:
                raise self._malformed(
                    eos, "expected EOS after the START(ram) block list "
                    "(lengths summed to the MEM_SIZE total), found %#018x"
                    % word)
            self._check_footer(cur, section_id, "START(ram)")
        except _NeedMore:
            return False
        ram_start = records.RamStart(
            section_id=section_id, instance_id=instance_id,
            version_id=version_id, total_bytes=total, blocks=tuple(blocks),
            ignore_shared=self._ignore_shared,
            raw=bytes(self._buf[start:cur.pos]))
        self._start = cur.pos
        self._blocks = by_name
        self._ram_id = section_id
        self.ram_start = ram_start
        self.state = records.ReaderState.RAM
        self._visitor.on_ram_start(ram_start)
        return True

    def _check_footer(self, cur: _Cursor, section_id: int,
                      what: str) -> None:
        pos = cur.pos
        marker = cur.u8()
        if marker != c.SECTION_FOOTER:
            raise self._malformed(
                pos, "expected the footer (0x7e) of %s, found byte %#04x"
                % (what, marker))
        found = cur.be32()
        if found != section_id:
            raise self._malformed(
                pos, "footer of %s carries section id %d, expected %d"
                % (what, found, section_id), section_id=found)

    def _parse_footer(self) -> bool:
        kind = self._section_kind
        cur = _Cursor(self._buf, self._start, self._end)
        try:
            self._check_footer(cur, self._ram_id,
                               "%s(ram)" % c.SECTION_NAMES[kind])
        except _NeedMore:
            return False
        self._start = cur.pos
        self._section_kind = 0
        self._want_footer = False
        self.sections += 1
        if kind == c.SECTION_END:
            self.state = records.ReaderState.TAIL
        self._visitor.on_section_end(kind, self._ram_id)
        return True

    # RAM records (hot path) -------------------------------------------------

    def _parse_records(self) -> bool:
        """Parse RAM records up to the section's EOS.

        :returns: False when the next record is incomplete.
        """
        buf = self._buf
        mv = self._mv
        pos = self._start
        end = self._end
        unpack = _unpack_be64
        visitor = self._visitor
        on_page = visitor.on_page
        on_zero = visitor.on_zero
        block = self._last_block
        used = block.used_length if block is not None else 0
        pages = zeros = 0
        fast = self._fast
        try:
            while end - pos >= 8:
                if fast is not None and block is not None:
                    # A run of CONTINUE records at once; it stops before
                    # any other (or invalid) record, parsed below.
                    pos, n_pages, n_zeros = fast(buf, pos, end, block)
                    pages += n_pages
                    zeros += n_zeros
                    if end - pos < 8:
                        return False
                (word,) = unpack(buf, pos)
                flags = word & 0xFFF
                if flags == _PAGE_CONT and block is not None:
                    if end - pos < _PAGE_REC:
                        return False
                    addr = word ^ flags
                    if addr >= used:
                        raise self._out_of_range(pos, flags, block, addr)
                    on_page(block, addr >> 12, mv[pos + 8:pos + _PAGE_REC])
                    pos += _PAGE_REC
                    pages += 1
                elif flags == _ZERO_CONT and block is not None:
                    if end - pos < _ZERO_REC:
                        return False
                    addr = word ^ flags
                    if addr >= used:
                        raise self._out_of_range(pos, flags, block, addr)
                    if buf[pos + 8]:
                        raise self._bad_fill(pos, flags, block, addr,
                                             buf[pos + 8])
                    on_zero(block, addr >> 12)
                    pos += _ZERO_REC
                    zeros += 1
                elif word == c.RAM_FLAG_EOS:
                    pos += 8
                    self._want_footer = True
                    return True
                else:
                    # Record with an idstr, or invalid: the cold path.
                    self._start = pos
                    result = self._parse_record_slow(pos, end, word, flags,
                                                     block)
                    if result is None:
                        return False
                    pos, block, is_page = result
                    used = block.used_length
                    if is_page:
                        pages += 1
                    else:
                        zeros += 1
            return False
        finally:
            self._start = pos
            self._last_block = block
            self.pages += pages
            self.zero_pages += zeros

    def _bad_fill(self, pos: int, flags: int, block: records.RamBlock,
                  addr: int, fill: int) -> exception.MalformedStreamError:
        return self._malformed(
            pos, "ZERO record for block %r at offset %#x has fill byte "
            "%#04x; QEMU 10.x accepts only 0" % (block.name, addr, fill),
            record=record_name(flags), block=block.name)

    def _parse_record_slow(
            self, pos: int, end: int, word: int, flags: int,
            block: records.RamBlock | None,
    ) -> tuple[int, records.RamBlock, bool] | None:
        """Decode one RAM record that is not a CONTINUE page/zero record.

        :returns: (new position, block, whether it was a PAGE), or None when
            the record is incomplete.
        """
        if flags & _UNKNOWN_FLAG_BITS:
            raise self._malformed(
                pos, "RAM record %#018x has unknown flag bits %#05x (page "
                "offsets are 4 KiB aligned on x86, so the low 12 bits are "
                "flags)" % (word, flags & _UNKNOWN_FLAG_BITS),
                record=record_name(flags))
        base = flags & ~c.RAM_FLAG_CONTINUE
        name = record_name(flags)
        if base in c.UNSUPPORTED_RAM_FLAG_FEATURES:
            raise self._unsupported(
                pos, c.UNSUPPORTED_RAM_FLAG_FEATURES[base],
                "RAM %s record cannot be forwarded by a stream-level proxy"
                % name, record=name)
        if base == c.RAM_FLAG_EOS:
            raise self._malformed(
                pos, "EOS record %#018x carries extra bits" % word,
                record=name)
        if base != c.RAM_FLAG_PAGE and base != c.RAM_FLAG_ZERO:
            if base == c.RAM_FLAG_MEM_SIZE:
                reason = "MEM_SIZE record outside START(ram)"
            elif base == c.RAM_FLAG_FULL:
                reason = "obsolete RAM_SAVE_FLAG_FULL record"
            else:
                reason = "invalid RAM record flags %#05x" % flags
            raise self._malformed(pos, reason, record=name)
        rec = pos
        pos += 8
        if flags & c.RAM_FLAG_CONTINUE:
            if block is None:
                raise self._malformed(
                    rec, "RAM %s record has CONTINUE but no earlier record "
                    "named a block" % name, record=name)
        else:
            if end - pos < 1:
                return None
            length = self._buf[pos]
            if end - pos < 1 + length:
                return None
            raw_name = bytes(self._buf[pos + 1:pos + 1 + length])
            pos += 1 + length
            found = self._blocks.get(raw_name)
            if found is None:
                block_name = _idstr(raw_name)
                raise exception.UnknownBlockError(
                    offset=self._at(rec), record=name, block=block_name,
                    reason="RAM %s record names block %r, which START(ram) "
                    "did not announce" % (name, block_name))
            block = found
        addr = word ^ flags
        if addr >= block.used_length:
            raise self._out_of_range(rec, flags, block, addr)
        if base == c.RAM_FLAG_PAGE:
            if end - pos < c.PAGE_SIZE:
                return None
            self._visitor.on_page(block, addr >> 12,
                                  self._mv[pos:pos + c.PAGE_SIZE])
            return pos + c.PAGE_SIZE, block, True
        if end - pos < 1:
            return None
        if self._buf[pos]:
            raise self._bad_fill(rec, flags, block, addr, self._buf[pos])
        self._visitor.on_zero(block, addr >> 12)
        return pos + 1, block, False
