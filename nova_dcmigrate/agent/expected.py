"""The ``EXPECTED`` table a new destination sends its source.

For every page: whether the new destination will hold it (itself, or
relayed by a remote holder) and the digest of that copy, so the source
drops exactly the pages whose content the new destination gets anyway
(:mod:`.source_filter`).

Why a module of its own: the table is built while the source's link and
the holders wait (it precedes ``READY``), for every page of the guest.
Built one page at a time in Python it cost ~60 ms per 512 MiB of guest
RAM on the new destination's stream thread; here the flags come from the
assignment's owner array in one ``bytes.translate`` per range and the
digests are copied from the winning holder's inventory by chunk.
"""

from __future__ import annotations

import array
import sys
from collections.abc import Iterator

from nova_dcmigrate.agent.layout import Layout
from nova_dcmigrate.agent.page_store import DIGEST_LEN
from nova_dcmigrate.agent import plan as planmod
from nova_dcmigrate.agent import relay_wire as wire

#: Owner index of this host's own store in an assignment.
LOCAL = 0
#: Low byte of ``plan.NONE`` (-1) in the owner array.
_NONE_BYTE = planmod.NONE & 0xFF
#: Owner byte -> flag: nobody, this host, a remote holder.
_FLAGS = bytes(planmod.FLAG_NONE if b == _NONE_BYTE else
               planmod.FLAG_LOCAL if b == LOCAL else
               planmod.FLAG_REMOTE for b in range(256))
_ZERO_DIGEST = bytes(DIGEST_LEN)


def owner_bytes(owner: array.array[int], g0: int, g1: int) -> bytes:
    """One byte per page: the owner's low byte (holders count < 255)."""
    raw = owner[g0:g1].tobytes()
    return raw[0::2] if sys.byteorder == "little" else raw[1::2]


def _digests(assignment: planmod.Assignment, idx: int, first: int,
             g0: int, g1: int, owners: bytes) -> bytes:
    """The assigned copies' digests of pages ``[g0, g1)`` (zeros where
    nobody holds the page)."""
    digests = assignment.digests
    assert isinstance(digests, planmod.AssignedDigests)
    held = set(owners)
    held.discard(_NONE_BYTE)
    if not held:
        return bytes((g1 - g0) * DIGEST_LEN)
    if len(held) > 1:
        # Copies of several hosts interleaved: page by page.
        return digests[g0 * DIGEST_LEN:g1 * DIGEST_LEN]
    # One copy for every held page of the range: its inventory's digests
    # by chunk, then zeros where nobody holds the page.
    src = digests.inventories[held.pop()].digests[idx]
    out = bytearray((g1 - g0) * DIGEST_LEN)
    last = first + (g1 - g0)
    chunk = planmod.INV_CHUNK
    for k in range(first // chunk, (last - 1) // chunk + 1):
        ch = src.chunks[k]
        if ch is None:
            continue
        lo, hi = max(first, k * chunk), min(last, (k + 1) * chunk)
        out[(lo - first) * DIGEST_LEN:(hi - first) * DIGEST_LEN] = \
            ch[(lo - k * chunk) * DIGEST_LEN:(hi - k * chunk) * DIGEST_LEN]
    i = owners.find(_NONE_BYTE)
    while i >= 0:
        out[i * DIGEST_LEN:(i + 1) * DIGEST_LEN] = _ZERO_DIGEST
        i = owners.find(_NONE_BYTE, i + 1)
    return bytes(out)


def _slow_payloads(layout: Layout, assignment: planmod.Assignment
                   ) -> Iterator[bytes]:
    """Page by page: a flat digest table (tests), or 255 holders or more
    (their owner index does not fit the byte the fast path uses)."""
    owner = assignment.owner
    for idx, base in enumerate(layout.bases):
        n = layout.npages[idx]
        for first in range(0, n, wire.SEND_RANGE):
            last = min(n, first + wire.SEND_RANGE)
            flags = bytes(
                planmod.FLAG_NONE if owner[g] < 0 else
                planmod.FLAG_LOCAL if owner[g] == LOCAL else
                planmod.FLAG_REMOTE
                for g in range(base + first, base + last))
            if flags.count(planmod.FLAG_NONE) == len(flags):
                continue
            digests = assignment.digests[(base + first) * DIGEST_LEN:
                                         (base + last) * DIGEST_LEN]
            yield wire.encode_expected(idx, first, flags, digests)


def expected_payloads(layout: Layout, assignment: planmod.Assignment
                      ) -> Iterator[bytes]:
    """``EXPECTED`` payloads in page order, one range at a time.

    Ranges nobody holds are left out: the source's table starts as
    :data:`~.plan.FLAG_NONE` for every page (``_receive_plan``), so they
    would change nothing there and only delay ``READY`` (half the frames
    of a redirect at half of the first pass).
    """
    digests = assignment.digests
    if not isinstance(digests, planmod.AssignedDigests) or \
            len(digests.inventories) >= _NONE_BYTE:
        yield from _slow_payloads(layout, assignment)
        return
    owner = assignment.owner
    for idx, base in enumerate(layout.bases):
        n = layout.npages[idx]
        for first in range(0, n, wire.SEND_RANGE):
            last = min(n, first + wire.SEND_RANGE)
            g0, g1 = base + first, base + last
            owners = owner_bytes(owner, g0, g1)
            if owners.count(_NONE_BYTE) == len(owners):
                continue        # the source's table starts as "nobody"
            yield wire.encode_expected(
                idx, first, owners.translate(_FLAGS),
                _digests(assignment, idx, first, g0, g1, owners))
