"""Payload encodings of the redirect frames (inventory, relay, control).

Every decoder validates block indices, page ranges and lengths against
the migration's block layout and raises PeerProtocolError: a peer that
passed authentication is still not trusted to send sane numbers.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from nova_dcmigrate.agent import exception
from nova_dcmigrate.agent.layout import Layout
from nova_dcmigrate.stream import PAGE_SIZE

DIGEST_LEN = 16
RANGE = struct.Struct(">HII")        # block index, first page, count
ENTRY = struct.Struct(">HIB")        # block index, page, state
U64 = struct.Struct(">Q")
PROGRESS = struct.Struct(">QQB")     # position, covered pages, pass1 done
MAX_RANGE = 65536                    # largest range a peer may send
#: Pages per range we send: a 65536-page INVENTORY/EXPECTED frame is
#: 1.2 MiB, copied a few times on each side (decode, MAC, scratch buffer
#: kept at the largest frame) -- several MiB of agent RSS at a redirect.
#: 4096 pages (76 KiB) cost the same CPU per page.
SEND_RANGE = 4096

STATE_ZERO = 1
STATE_DATA = 2


def _check_range(layout: Layout, idx: int, first: int, count: int,
                 peer: str) -> None:
    if idx >= len(layout.npages):
        raise exception.PeerProtocolError(
            peer=peer, reason="block index %d out of range" % idx)
    if count == 0 or count > MAX_RANGE or \
            first + count > layout.npages[idx]:
        raise exception.PeerProtocolError(
            peer=peer, reason="page range %d+%d outside block %s (%d pages)"
            % (first, count, layout.names[idx], layout.npages[idx]))


# -- inventory: per page state, attempt and digest --------------------------
def encode_inventory(idx: int, first: int, states: bytes | bytearray,
                     attempts: bytes, digests: bytes | bytearray) -> bytes:
    return RANGE.pack(idx, first, len(states)) + bytes(states) + \
        bytes(attempts) + bytes(digests)


def decode_inventory(payload: memoryview, layout: Layout, peer: str
                     ) -> tuple[int, int, bytes, bytes, bytes]:
    if len(payload) < RANGE.size:
        raise exception.PeerProtocolError(peer=peer,
                                          reason="short inventory frame")
    idx, first, count = RANGE.unpack_from(payload)
    _check_range(layout, idx, first, count, peer)
    need = RANGE.size + count * (1 + 2 + DIGEST_LEN)
    if len(payload) != need:
        raise exception.PeerProtocolError(
            peer=peer, reason="inventory frame of %d bytes, expected %d"
            % (len(payload), need))
    o = RANGE.size
    states = bytes(payload[o:o + count])
    attempts = bytes(payload[o + count:o + 3 * count])
    digests = bytes(payload[o + 3 * count:need])
    if max(states) > STATE_DATA:
        raise exception.PeerProtocolError(peer=peer,
                                          reason="bad page state")
    return idx, first, states, attempts, digests


# -- expected table (new destination -> source) -----------------------------
def encode_expected(idx: int, first: int, flags: bytes | bytearray,
                    digests: bytes | bytearray) -> bytes:
    return RANGE.pack(idx, first, len(flags)) + bytes(flags) + bytes(digests)


def decode_expected(payload: memoryview, layout: Layout, peer: str
                    ) -> tuple[int, int, bytes, bytes]:
    if len(payload) < RANGE.size:
        raise exception.PeerProtocolError(peer=peer,
                                          reason="short expected frame")
    idx, first, count = RANGE.unpack_from(payload)
    _check_range(layout, idx, first, count, peer)
    need = RANGE.size + count * (1 + DIGEST_LEN)
    if len(payload) != need:
        raise exception.PeerProtocolError(
            peer=peer, reason="expected frame of %d bytes, expected %d"
            % (len(payload), need))
    o = RANGE.size
    return (idx, first, bytes(payload[o:o + count]),
            bytes(payload[o + count:need]))


# -- page assignment (new destination -> holder) -----------------------------
def encode_assign(idx: int, first: int, marks: bytes | bytearray) -> bytes:
    return RANGE.pack(idx, first, len(marks)) + bytes(marks)


def decode_assign(payload: memoryview, layout: Layout, peer: str
                  ) -> tuple[int, int, bytes]:
    if len(payload) < RANGE.size:
        raise exception.PeerProtocolError(peer=peer,
                                          reason="short assign frame")
    idx, first, count = RANGE.unpack_from(payload)
    _check_range(layout, idx, first, count, peer)
    if len(payload) != RANGE.size + count:
        raise exception.PeerProtocolError(peer=peer,
                                          reason="bad assign frame length")
    return idx, first, bytes(payload[RANGE.size:])


# -- relayed pages (holder -> new destination) -------------------------------
def decode_pages(payload: memoryview, layout: Layout, peer: str
                 ) -> Iterator[tuple[int, int, memoryview | None]]:
    """Yield (block index, page, data or None for a zero page)."""
    pos, end = 0, len(payload)
    npages = layout.npages
    while pos < end:
        if end - pos < ENTRY.size:
            raise exception.PeerProtocolError(peer=peer,
                                              reason="truncated page entry")
        idx, page, state = ENTRY.unpack_from(payload, pos)
        pos += ENTRY.size
        if idx >= len(npages) or page >= npages[idx]:
            raise exception.PeerProtocolError(
                peer=peer, reason="relayed page %d of block %d out of range"
                % (page, idx))
        if state == STATE_ZERO:
            yield idx, page, None
        elif state == STATE_DATA:
            if end - pos < PAGE_SIZE:
                raise exception.PeerProtocolError(
                    peer=peer, reason="truncated relayed page")
            yield idx, page, payload[pos:pos + PAGE_SIZE]
            pos += PAGE_SIZE
        else:
            raise exception.PeerProtocolError(
                peer=peer, reason="bad relayed page state %d" % state)


def encode_g_list(values: list[int]) -> bytes:
    return b"".join(U64.pack(v) for v in values)


def decode_g_list(payload: memoryview, layout: Layout, peer: str
                  ) -> list[int]:
    if len(payload) % U64.size:
        raise exception.PeerProtocolError(peer=peer,
                                          reason="bad page list length")
    out = [U64.unpack_from(payload, o)[0]
           for o in range(0, len(payload), U64.size)]
    if any(v >= layout.total_pages for v in out):
        raise exception.PeerProtocolError(peer=peer,
                                          reason="page number out of range")
    return out
