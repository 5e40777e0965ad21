"""Who sends which page after a redirect, and where the frontier lies.

Assignment: every host that holds pages of the migration (old
destinations, or the new destination itself on a resume) reports its
inventory; for each page the copy written by the most recent attempt wins
(ties: the earlier holder in the list, so the new destination's own store
is preferred).  The source later drops a page iff its content digest
equals the assigned copy's.

Frontier: QEMU's first pass walks pages upward and cannot be reordered,
while holders relay their pages downward.  Held pages below the frontier
are sent by the source, those at or above it by the holders.  The
frontier is chosen so both finish together::

    (held_cost[s, X) + source_only_cost) / rate_source
        == held_cost[X, a) / rate_holders

and re-planned from measured rates as the transfer runs (DCmigrate's
"optimise the amount each host sends").  The re-planned frontier only ever
moves down, so every page the source skipped is at or above it and the
holders' downward relay covers it.
"""

from __future__ import annotations

import array
from collections.abc import Sequence
from dataclasses import dataclass

from nova_dcmigrate.agent.layout import Layout
from nova_dcmigrate.stream import PAGE_SIZE

NONE = -1
DIGEST_LEN = 16
# Bytes a page costs on the wire: PAGE record with CONTINUE vs ZERO record.
DATA_COST = PAGE_SIZE + 8
ZERO_COST = 9

# Flags sent to the source for each page.
FLAG_NONE = 0
FLAG_LOCAL = 1       # the new destination holds it itself
FLAG_REMOTE = 2      # a remote holder will relay it


@dataclass
class Inventory:
    """One holder's pages: per block, state bytes, attempts, digests."""

    states: list[bytearray]
    attempts: list[array.array[int]]
    digests: list[bytearray]

    @classmethod
    def empty(cls, layout: Layout) -> Inventory:
        return cls([bytearray(n) for n in layout.npages],
                   [array.array("H", bytes(2 * n)) for n in layout.npages],
                   [bytearray(n * DIGEST_LEN) for n in layout.npages])

    def add_range(self, idx: int, first: int, states: bytes,
                  attempts_be: bytes, digests: bytes) -> None:
        n = len(states)
        self.states[idx][first:first + n] = states
        att = array.array("H")
        att.frombytes(attempts_be)
        import sys
        if sys.byteorder == "little":
            att.byteswap()
        self.attempts[idx][first:first + n] = att
        self.digests[idx][first * DIGEST_LEN:(first + n) * DIGEST_LEN] = \
            digests

    def held_pages(self) -> int:
        return sum(len(s) - s.count(0) for s in self.states)


@dataclass
class Assignment:
    layout: Layout
    owner: array.array[int]          # per global page: holder index or -1
    state: bytearray                 # per global page: state of the copy
    digests: bytearray               # per global page: digest of the copy

    def pages_of(self, holder: int) -> int:
        return self.owner.count(holder)


def assign(layout: Layout, inventories: Sequence[Inventory]) -> Assignment:
    total = layout.total_pages
    owner = array.array("h", [NONE]) * total
    best = array.array("i", [-1]) * total
    state = bytearray(total)
    digests = bytearray(total * DIGEST_LEN)
    for hi, inv in enumerate(inventories):
        for idx, base in enumerate(layout.bases):
            st, att, dg = inv.states[idx], inv.attempts[idx], inv.digests[idx]
            for page in range(len(st)):
                s = st[page]
                if not s:
                    continue
                g = base + page
                a = att[page]
                if a > best[g]:
                    best[g] = a
                    owner[g] = hi
                    state[g] = s
                    digests[g * DIGEST_LEN:(g + 1) * DIGEST_LEN] = \
                        dg[page * DIGEST_LEN:(page + 1) * DIGEST_LEN]
    return Assignment(layout, owner, state, digests)


class FrontierPlanner:
    """Balances the source's first pass against the holders' relays."""

    def __init__(self, assignment: Assignment, remote: set[int]) -> None:
        total = assignment.layout.total_pages
        self.total = total
        held = [0] * (total + 1)       # remote-held cost below g
        unheld = [0] * (total + 1)     # count of pages nobody holds below g
        h = u = 0
        owner, state = assignment.owner, assignment.state
        for g in range(total):
            held[g] = h
            unheld[g] = u
            o = owner[g]
            if o in remote:
                h += DATA_COST if state[g] == 2 else ZERO_COST
            elif o == NONE:
                u += 1
        held[total] = h
        unheld[total] = u
        self.held = held
        self.unheld = unheld

    def remote_cost(self, lo: int, hi: int) -> int:
        return self.held[hi] - self.held[lo]

    def plan(self, s_pos: int, a_pos: int, rate_source: float,
             rate_holders: float, source_page_cost: float = DATA_COST
             ) -> int:
        """Frontier X in [s_pos, a_pos] where both sides finish together.

        :param s_pos: next page of the source's first pass.
        :param a_pos: lowest page the holders have reached (exclusive
            upper end of their remaining work).
        :param source_page_cost: bytes per page nobody holds (learned from
            what the source sent: zero pages are cheap).
        """
        s_pos = max(0, min(s_pos, self.total))
        a_pos = max(s_pos, min(a_pos, self.total))
        rs = max(rate_source, 1.0)
        rh = max(rate_holders, 1.0)
        u_rem = (self.unheld[self.total] - self.unheld[s_pos]) * \
            source_page_cost
        held = self.held

        def source_time(x: int) -> float:
            return (held[x] - held[s_pos] + u_rem) / rs

        def holder_time(x: int) -> float:
            return (held[a_pos] - held[x]) / rh

        lo, hi = s_pos, a_pos
        if source_time(lo) >= holder_time(lo):
            return lo
        if source_time(hi) <= holder_time(hi):
            return hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if source_time(mid) < holder_time(mid):
                lo = mid
            else:
                hi = mid
        return hi
