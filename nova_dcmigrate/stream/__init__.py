"""Codec for QEMU's single-channel precopy migration stream.

The data plane parses the live stream between two QEMUs and rebuilds it
for a new destination (reference ``qemu-migration-stream.md`` sections 1,
2 and 7).  :class:`StreamReader` validates and decodes it incrementally,
:class:`StreamWriter` re-encodes it.
"""

from __future__ import annotations

from nova_dcmigrate.stream.constants import PAGE_SIZE
from nova_dcmigrate.stream.exception import MalformedStreamError
from nova_dcmigrate.stream.exception import PageOutOfRangeError
from nova_dcmigrate.stream.exception import StreamError
from nova_dcmigrate.stream.exception import TruncatedStreamError
from nova_dcmigrate.stream.exception import UnknownBlockError
from nova_dcmigrate.stream.exception import UnsupportedStreamError
from nova_dcmigrate.stream.reader import record_name
from nova_dcmigrate.stream.reader import StreamReader
from nova_dcmigrate.stream.reader import StreamVisitor
from nova_dcmigrate.stream.records import Preamble
from nova_dcmigrate.stream.records import RamBlock
from nova_dcmigrate.stream.records import RamStart
from nova_dcmigrate.stream.records import ReaderState
from nova_dcmigrate.stream.writer import StreamWriter

__all__ = [
    "PAGE_SIZE",
    "StreamError",
    "TruncatedStreamError",
    "MalformedStreamError",
    "UnsupportedStreamError",
    "UnknownBlockError",
    "PageOutOfRangeError",
    "RamBlock",
    "Preamble",
    "RamStart",
    "ReaderState",
    "StreamVisitor",
    "StreamReader",
    "StreamWriter",
    "record_name",
]
