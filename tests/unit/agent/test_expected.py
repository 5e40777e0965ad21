"""The EXPECTED table built by range equals the page-by-page one."""

import os
import random

import pytest

from nova_dcmigrate.agent import expected
from nova_dcmigrate.agent.layout import Layout
from nova_dcmigrate.agent import plan as planmod
from nova_dcmigrate.agent import relay_wire as wire

LAYOUT = Layout.from_blocks([("pc.ram", 40 << 20), ("vga.vram", 4 << 20),
                             ("pc.bios", 256 << 10)])


def _inventory(rng, lo, hi, attempt):
    """Pages [lo, hi) of pc.ram, some zero, some data, some absent; stale
    digest bytes on absent pages (a store does not clear them)."""
    inv = planmod.Inventory.empty(LAYOUT)
    states = bytes(rng.choice((0, 1, 2, 2)) for _ in range(hi - lo))
    att = attempt.to_bytes(2, "big") * (hi - lo)
    inv.add_range(0, lo, states, att, os.urandom(16 * (hi - lo)))
    return inv


@pytest.mark.parametrize("holders", [1, 2, 3])
def test_by_range_equals_page_by_page(holders):
    rng = random.Random(holders)
    n = LAYOUT.npages[0]
    invs = [planmod.Inventory.empty(LAYOUT)]
    if holders == 3:
        # This host holds some pages itself (a resume).
        invs = [_inventory(rng, n // 3, n // 2, 1)]
    for h in range(1, holders + 1):
        invs.append(_inventory(rng, (h - 1) * n // 5, n // 2 + 700 * h,
                               h))
    assignment = planmod.assign(LAYOUT, invs)
    fast = list(expected.expected_payloads(LAYOUT, assignment))
    slow = list(expected._slow_payloads(LAYOUT, assignment))
    assert fast == slow
    # Ranges nobody holds are left out; the others give every page the
    # owner's flag (the source's table starts as FLAG_NONE).
    flags = bytearray(LAYOUT.total_pages)
    for p in fast:
        idx, first, fl, _dg = wire.decode_expected(memoryview(p), LAYOUT,
                                                   "t")
        assert fl.count(planmod.FLAG_NONE) < len(fl)
        g = LAYOUT.bases[idx] + first
        flags[g:g + len(fl)] = fl
    assert flags == bytes(
        planmod.FLAG_NONE if o == planmod.NONE else
        planmod.FLAG_LOCAL if o == 0 else planmod.FLAG_REMOTE
        for o in assignment.owner)
    assert len(fast) < -(-LAYOUT.npages[0] // wire.SEND_RANGE)


def test_flat_digest_table_goes_page_by_page():
    owner = planmod.array.array("h", [planmod.NONE]) * LAYOUT.total_pages
    owner[5] = 1
    digests = bytearray(16 * LAYOUT.total_pages)
    digests[80:96] = b"x" * 16
    a = planmod.Assignment(LAYOUT, owner, bytearray(LAYOUT.total_pages),
                           digests)
    first = next(expected.expected_payloads(LAYOUT, a))
    _idx, _first, fl, dg = wire.decode_expected(memoryview(first), LAYOUT,
                                                "t")
    assert fl[5] == planmod.FLAG_REMOTE and dg[80:96] == b"x" * 16


def test_assignment_marks_each_holders_pages():
    from nova_dcmigrate.agent import merge

    rng = random.Random(7)
    n = LAYOUT.npages[0]
    invs = [planmod.Inventory.empty(LAYOUT), _inventory(rng, 0, n // 2, 1),
            _inventory(rng, n // 4, n, 2)]
    assignment = planmod.assign(LAYOUT, invs)

    class Conn:
        frames: list = []

        def send(self, ftype, payload=b""):
            self.frames.append((ftype, bytes(payload)))

    for index in (1, 2):
        conn = Conn()
        conn.frames = []
        merge.RelayPuller(index, "h", conn).send_assignment(assignment)
        got = bytearray(LAYOUT.total_pages)
        for ftype, payload in conn.frames[:-1]:
            idx, first, marks = wire.decode_assign(memoryview(payload),
                                                   LAYOUT, "t")
            g = LAYOUT.bases[idx] + first
            got[g:g + len(marks)] = marks
        assert conn.frames[-1][0] == merge.FrameType.ASSIGN_END
        assert got == bytes(1 if o == index else 0
                            for o in assignment.owner)
        assert got.count(1) == assignment.pages_of(index) > 0
