"""Immutable values the stream reader produces and the writer consumes.

A proxy forwards the header, the configuration and START(ram) verbatim
(reference ``qemu-migration-stream.md`` section 2.3), so the records keep
the exact bytes they were parsed from in ``raw`` next to the decoded
fields.  The RAM block list comes from START(ram)'s MEM_SIZE setup data
(section 1.5).
"""

from __future__ import annotations

import dataclasses
import enum

from nova_dcmigrate.stream import constants
from nova_dcmigrate.stream import exception


@dataclasses.dataclass(frozen=True, slots=True)
class RamBlock:
    """One RAM block announced by START(ram).

    :ivar index: position in START(ram)'s block list.
    :ivar name: the block's idstr, e.g. ``"pc.ram"``.
    :ivar used_length: length in bytes; page offsets must be below it.
    :ivar addr: guest-physical address of the block's memory region; only
        sent with the ``x-ignore-shared`` capability, else ``None``.
    """

    index: int
    name: str
    used_length: int
    addr: int | None = None

    @property
    def npages(self) -> int:
        """Number of target pages in the block (rounded up)."""
        return -(-self.used_length // constants.PAGE_SIZE)


@dataclasses.dataclass(frozen=True, slots=True)
class Preamble:
    """File header plus configuration section (section 1.2).

    :ivar machine_type: the source's machine type, e.g. ``"pc-i440fx-10.0"``.
    :ivar capabilities: validated capabilities listed in the configuration
        (``configuration/capabilities``), in stream order.
    :ivar raw: the exact header and configuration bytes.
    """

    machine_type: str
    capabilities: tuple[str, ...]
    raw: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class RamStart:
    """The START section of the ``ram`` iterable (section 1.5, "Setup").

    :ivar section_id: id every later PART/END(ram) and footer must carry.
    :ivar instance_id: START's instance id (0 for ``ram``).
    :ivar version_id: START's version id (4 for ``ram``).
    :ivar total_bytes: MEM_SIZE total; equals the sum of the block lengths.
    :ivar blocks: the announced blocks, in stream order.
    :ivar ignore_shared: whether blocks carried an address
        (``x-ignore-shared`` capability).
    :ivar raw: the exact bytes of the whole section, footer included.
    """

    section_id: int
    instance_id: int
    version_id: int
    total_bytes: int
    blocks: tuple[RamBlock, ...]
    ignore_shared: bool
    raw: bytes

    def block(self, name: str) -> RamBlock:
        """Return the block called ``name``.

        :raises UnknownBlockError: when START(ram) did not announce it.
        """
        for block in self.blocks:
            if block.name == name:
                return block
        raise exception.UnknownBlockError(
            block=name,
            reason="block %r was not announced by START(ram)" % name)


class ReaderState(enum.IntEnum):
    """Where a :class:`~nova_dcmigrate.stream.reader.StreamReader` is."""

    #: Reading the header and configuration section.
    PREAMBLE = 0
    #: Preamble done; only commands may come before START(ram).
    PRE_RAM = 1
    #: START(ram) seen; reading PART/END(ram) sections and commands.
    RAM = 2
    #: END(ram) footer consumed; the rest is opaque tail.
    TAIL = 3
    #: An error was raised; every later call re-raises it.
    FAILED = 4
