"""Wire constants of QEMU's precopy migration stream.

The values are QEMU's own (``migration/savevm.h``, ``migration/savevm.c``
``enum qemu_vm_cmd`` and ``migration/ram.h``), identical in QEMU 7.2 and 10.x
(shared reference ``qemu-migration-stream.md`` sections 1.1, 1.3 and 1.5).
They live in one module so that the reader, the writer and the tests agree
on a single spelling.
"""

from __future__ import annotations

import struct
from typing import Final

#: ``QEMU_VM_FILE_MAGIC`` ("QEVM"), first be32 of the stream (section 1.1).
FILE_MAGIC: Final = 0x5145564D
#: ``QEMU_VM_FILE_VERSION``; version 2 (COMPAT) is obsolete (section 1.1).
FILE_VERSION: Final = 3

# Top-level section types (section 1.1).
SECTION_EOF: Final = 0x00
SECTION_START: Final = 0x01
SECTION_PART: Final = 0x02
SECTION_END: Final = 0x03
SECTION_FULL: Final = 0x04
SECTION_SUBSECTION: Final = 0x05
SECTION_VMDESCRIPTION: Final = 0x06
SECTION_CONFIGURATION: Final = 0x07
SECTION_COMMAND: Final = 0x08
SECTION_FOOTER: Final = 0x7E

SECTION_NAMES: Final[dict[int, str]] = {
    SECTION_EOF: "EOF",
    SECTION_START: "START",
    SECTION_PART: "PART",
    SECTION_END: "END",
    SECTION_FULL: "FULL",
    SECTION_SUBSECTION: "SUBSECTION",
    SECTION_VMDESCRIPTION: "VMDESCRIPTION",
    SECTION_CONFIGURATION: "CONFIGURATION",
    SECTION_COMMAND: "COMMAND",
    SECTION_FOOTER: "FOOTER",
}

# Commands, ``enum qemu_vm_cmd`` (section 1.3).
CMD_INVALID: Final = 0
CMD_OPEN_RETURN_PATH: Final = 1
CMD_PING: Final = 2
CMD_POSTCOPY_ADVISE: Final = 3
CMD_POSTCOPY_LISTEN: Final = 4
CMD_POSTCOPY_RUN: Final = 5
CMD_POSTCOPY_RAM_DISCARD: Final = 6
CMD_PACKAGED: Final = 7
CMD_ENABLE_COLO: Final = 8
CMD_POSTCOPY_RESUME: Final = 9
CMD_RECV_BITMAP: Final = 10
CMD_SWITCHOVER_START: Final = 11

COMMAND_NAMES: Final[dict[int, str]] = {
    CMD_INVALID: "INVALID",
    CMD_OPEN_RETURN_PATH: "OPEN_RETURN_PATH",
    CMD_PING: "PING",
    CMD_POSTCOPY_ADVISE: "POSTCOPY_ADVISE",
    CMD_POSTCOPY_LISTEN: "POSTCOPY_LISTEN",
    CMD_POSTCOPY_RUN: "POSTCOPY_RUN",
    CMD_POSTCOPY_RAM_DISCARD: "POSTCOPY_RAM_DISCARD",
    CMD_PACKAGED: "PACKAGED",
    CMD_ENABLE_COLO: "ENABLE_COLO",
    CMD_POSTCOPY_RESUME: "POSTCOPY_RESUME",
    CMD_RECV_BITMAP: "RECV_BITMAP",
    CMD_SWITCHOVER_START: "SWITCHOVER_START",
}

#: Commands a precopy stream-level proxy passes through, with the exact data
#: length QEMU's ``mig_cmd_args`` table demands (section 1.3).
SUPPORTED_COMMAND_LENGTHS: Final[dict[int, int]] = {
    CMD_OPEN_RETURN_PATH: 0,
    CMD_PING: 4,
    CMD_SWITCHOVER_START: 0,
}

#: Commands that switch the stream to postcopy, COLO or a nested package:
#: a stream-level proxy cannot support them (section 2.3).  Values are the
#: ``feature`` kwarg of :class:`UnsupportedStreamError`.
UNSUPPORTED_COMMAND_FEATURES: Final[dict[int, str]] = {
    CMD_POSTCOPY_ADVISE: "postcopy-advise",
    CMD_POSTCOPY_LISTEN: "postcopy-listen",
    CMD_POSTCOPY_RUN: "postcopy-run",
    CMD_POSTCOPY_RAM_DISCARD: "postcopy-ram-discard",
    CMD_PACKAGED: "packaged",
    CMD_ENABLE_COLO: "enable-colo",
    CMD_POSTCOPY_RESUME: "postcopy-resume",
    CMD_RECV_BITMAP: "recv-bitmap",
}

# RAM record flags, the low bits of each record's be64 (section 1.5).
RAM_FLAG_FULL: Final = 0x01
RAM_FLAG_ZERO: Final = 0x02
RAM_FLAG_MEM_SIZE: Final = 0x04
RAM_FLAG_PAGE: Final = 0x08
RAM_FLAG_EOS: Final = 0x10
RAM_FLAG_CONTINUE: Final = 0x20
RAM_FLAG_XBZRLE: Final = 0x40
RAM_FLAG_HOOK: Final = 0x80
RAM_FLAG_COMPRESS_PAGE: Final = 0x100
RAM_FLAG_MULTIFD_FLUSH: Final = 0x200
#: Every flag bit QEMU has ever defined.
RAM_FLAGS_KNOWN: Final = 0x3FF

RAM_FLAG_NAMES: Final[dict[int, str]] = {
    RAM_FLAG_FULL: "FULL",
    RAM_FLAG_ZERO: "ZERO",
    RAM_FLAG_MEM_SIZE: "MEM_SIZE",
    RAM_FLAG_PAGE: "PAGE",
    RAM_FLAG_EOS: "EOS",
    RAM_FLAG_CONTINUE: "CONTINUE",
    RAM_FLAG_XBZRLE: "XBZRLE",
    RAM_FLAG_HOOK: "HOOK",
    RAM_FLAG_COMPRESS_PAGE: "COMPRESS_PAGE",
    RAM_FLAG_MULTIFD_FLUSH: "MULTIFD_FLUSH",
}

#: RAM record types that change the wire format in ways a proxy cannot
#: follow (XBZRLE deltas, zlib pages, multifd sync points, RDMA hooks;
#: section 2.3).  Values are the ``feature`` kwarg of
#: :class:`UnsupportedStreamError`.
UNSUPPORTED_RAM_FLAG_FEATURES: Final[dict[int, str]] = {
    RAM_FLAG_XBZRLE: "xbzrle",
    RAM_FLAG_COMPRESS_PAGE: "compress-page",
    RAM_FLAG_MULTIFD_FLUSH: "multifd-flush",
    RAM_FLAG_HOOK: "rdma-hook",
}

#: x86 target page: 4 KiB, so the low 12 bits of a RAM record carry flags.
PAGE_BITS: Final = 12
PAGE_SIZE: Final = 1 << PAGE_BITS
PAGE_MASK: Final = PAGE_SIZE - 1

#: ``idstr`` of the RAM iterable section (section 1.5).
RAM_IDSTR: Final = "ram"

# Configuration subsections (section 1.2).
CONFIG_SUBSECTION_CAPABILITIES: Final = "configuration/capabilities"
CONFIG_SUBSECTION_TARGET_PAGE_BITS: Final = "configuration/target-page-bits"
CONFIG_SUBSECTION_UUID: Final = "configuration/uuid"
#: Capabilities the configuration section may carry that we can handle.
CAPABILITY_IGNORE_SHARED: Final = "x-ignore-shared"
CAPABILITY_MAPPED_RAM: Final = "mapped-ram"
#: Longest machine type name we accept; QEMU's are < 40 characters.
MAX_MACHINE_TYPE_LEN: Final = 256
#: Most capabilities a configuration section can list (QEMU has ~25).
MAX_CAPABILITIES: Final = 64

#: Stream features named in ``UnsupportedStreamError.feature`` that are not
#: a command or a RAM flag.
FEATURE_EARLY_SETUP: Final = "early-setup"
FEATURE_ITERABLE_SECTION: Final = "iterable-section"
FEATURE_TARGET_PAGE_BITS: Final = "target-page-bits"

# Return path (destination -> source), ``enum mig_rp_message_type``: each
# message is be16 type, be16 length, then ``length`` bytes.
RP_MSG_SHUT: Final = 1
RP_MSG_PONG: Final = 2
RP_MSG_SWITCHOVER_ACK: Final = 7
RP_HEADER: Final = struct.Struct(">HH")

# Pre-compiled big-endian codecs shared by the reader and the writer.
BE16: Final = struct.Struct(">H")
BE32: Final = struct.Struct(">I")
BE64: Final = struct.Struct(">Q")
COMMAND_HEADER: Final = struct.Struct(">BHH")
SECTION_HEADER: Final = struct.Struct(">BI")
FOOTER: Final = struct.Struct(">BI")
EOS_AND_FOOTER: Final = struct.Struct(">QBI")
