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
"optimise the amount each host sends").  A lower frontier is always safe;
a raise only up to the lowest held page the source already skipped, so
the first plan matters most.

Nobody has seen the pages no one holds yet (the part of the first pass
the earlier attempts never reached), but they are priced: as the share
of zero pages among the held pages (a zero page costs 9 bytes on the
wire, a data page 4 KiB).  Pricing them all as data pages would put the
frontier at 0 whenever the unreached part is large, and a frontier at 0
can never be raised.

Held pages the source sends anyway (rewritten since they were held: the
digests differ) are *superseded*: the holders are told to skip them, and
the planner takes them off the holders' remaining work.

Never worse than restarting: holders that would carry less than
:data:`MIN_HOLDER_SHARE` of the remaining work at the current rates (a
fast source, a slow holder) get nothing -- the frontier goes to where they
are -- because what they could save is less than what a late relay costs
(the source idles while the last held pages trickle in; the holders also
take a share of the new destination's download).  The same when the new
destination's stream thread has no CPU headroom (:data:`MAX_CPU_BUSY`):
relayed pages cost it as much as the source's, so holders add nothing.
Re-planning with measured rates brings them back when the source turns
out slower or CPU frees up.  When the rate hints already say so before
anything moved (:func:`holders_worth_contacting`), the new destination
does not connect to the holders at all: their inventories (19 bytes per
page over their slow links) would delay the source's first byte, and the
attempt runs as a restart would.
"""

from __future__ import annotations

import array
import bisect
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
import sys
import time

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


#: Pages per allocation unit of an inventory's attempts and digests.
INV_CHUNK = 1024


class SparseAttempts:
    """A block's attempt per page (uint16), allocated by chunks of
    :data:`INV_CHUNK` pages on first write; unwritten pages read 0."""

    def __init__(self, npages: int) -> None:
        self.npages = npages
        self.chunks: list[array.array[int] | None] = \
            [None] * ((npages + INV_CHUNK - 1) // INV_CHUNK)

    def __len__(self) -> int:
        return self.npages

    def __getitem__(self, page: int) -> int:
        ch = self.chunks[page // INV_CHUNK]
        return ch[page % INV_CHUNK] if ch is not None else 0

    def write(self, first: int, values: array.array[int]) -> None:
        for k in range(first // INV_CHUNK,
                       (first + len(values) - 1) // INV_CHUNK + 1):
            lo = max(first, k * INV_CHUNK)
            hi = min(first + len(values), (k + 1) * INV_CHUNK)
            ch = self.chunks[k]
            if ch is None:
                ch = array.array("H", bytes(2 * INV_CHUNK))
                self.chunks[k] = ch
            ch[lo - k * INV_CHUNK:hi - k * INV_CHUNK] = \
                values[lo - first:hi - first]


class SparseDigests:
    """A block's digests (``DIGEST_LEN`` bytes per page) allocated by
    chunks of :data:`INV_CHUNK` pages on first write; sliced by byte
    offset one page at a time, like the flat bytearray it replaces
    (unwritten pages read as zeros)."""

    def __init__(self, npages: int) -> None:
        self.npages = npages
        self.chunks: list[bytearray | None] = \
            [None] * ((npages + INV_CHUNK - 1) // INV_CHUNK)

    def __len__(self) -> int:
        return self.npages * DIGEST_LEN

    def __getitem__(self, key: slice) -> bytes:
        start, stop, _step = key.indices(len(self))
        page = start // DIGEST_LEN
        k, off = divmod(start, INV_CHUNK * DIGEST_LEN)
        if stop > (k + 1) * INV_CHUNK * DIGEST_LEN or page * DIGEST_LEN \
                != start:
            raise IndexError("one page at a time")
        ch = self.chunks[k]
        if ch is None:
            return bytes(max(0, stop - start))
        return bytes(ch[off:off + stop - start])

    def write(self, first: int, digests: bytes) -> None:
        count = len(digests) // DIGEST_LEN
        for k in range(first // INV_CHUNK,
                       (first + count - 1) // INV_CHUNK + 1):
            lo = max(first, k * INV_CHUNK)
            hi = min(first + count, (k + 1) * INV_CHUNK)
            ch = self.chunks[k]
            if ch is None:
                ch = bytearray(INV_CHUNK * DIGEST_LEN)
                self.chunks[k] = ch
            ch[(lo - k * INV_CHUNK) * DIGEST_LEN:
               (hi - k * INV_CHUNK) * DIGEST_LEN] = \
                digests[(lo - first) * DIGEST_LEN:(hi - first) * DIGEST_LEN]


class Inventory:
    """One holder's pages: per block, state bytes, attempts, digests.

    Compact: attempts and digests (18 of a page's 19 bytes) are
    allocated by chunks of :data:`INV_CHUNK` pages, only where a range
    with a held page arrives: a store with nothing (the new
    destination's own, unless it resumes) costs one state byte per page,
    an old destination that got through a third of the RAM about a third
    of the rest.  Attempts and digests of a page are read only when its
    state is not 0.
    """

    def __init__(self, states: list[bytearray],
                 attempts: list[SparseAttempts],
                 digests: list[SparseDigests]) -> None:
        self.states = states
        self.attempts = attempts
        self.digests = digests

    @classmethod
    def empty(cls, layout: Layout) -> Inventory:
        return cls([bytearray(n) for n in layout.npages],
                   [SparseAttempts(n) for n in layout.npages],
                   [SparseDigests(n) for n in layout.npages])

    def add_range(self, idx: int, first: int, states: bytes,
                  attempts_be: bytes, digests: bytes) -> None:
        n = len(states)
        self.states[idx][first:first + n] = states
        # Only the chunks holding a page: nothing else is ever read.
        step = INV_CHUNK - first % INV_CHUNK
        lo = 0
        while lo < n:
            hi = min(n, lo + step)
            step = INV_CHUNK
            if states.count(0, lo, hi) == hi - lo:
                lo = hi
                continue
            att = array.array("H")
            att.frombytes(attempts_be[2 * lo:2 * hi])
            if sys.byteorder == "little":
                att.byteswap()
            self.attempts[idx].write(first + lo, att)
            self.digests[idx].write(first + lo,
                                    digests[lo * DIGEST_LEN:hi * DIGEST_LEN])
            lo = hi

    def held_pages(self) -> int:
        return sum(len(s) - s.count(0) for s in self.states)


class AssignedDigests:
    """The assigned copy's digest per global page, read from the
    inventories instead of copied (16 bytes per page saved): sliced as
    ``[g0 * DIGEST_LEN:g1 * DIGEST_LEN]`` like a flat bytearray."""

    def __init__(self, layout: Layout, owner: array.array[int],
                 inventories: Sequence[Inventory]) -> None:
        self.layout = layout
        self.owner = owner
        self.inventories = inventories

    def __len__(self) -> int:
        return self.layout.total_pages * DIGEST_LEN

    def __getitem__(self, key: slice) -> bytes:
        start, stop, step = key.indices(len(self))
        if step != 1 or start % DIGEST_LEN or stop % DIGEST_LEN:
            raise IndexError("page-aligned slices only")
        out = bytearray(max(0, stop - start))
        bases, owner, invs = self.layout.bases, self.owner, self.inventories
        for g in range(start // DIGEST_LEN, stop // DIGEST_LEN):
            o = owner[g]
            if o == NONE:
                continue
            idx = bisect.bisect_right(bases, g) - 1
            di = (g - bases[idx]) * DIGEST_LEN
            oi = g * DIGEST_LEN - start
            out[oi:oi + DIGEST_LEN] = \
                invs[o].digests[idx][di:di + DIGEST_LEN]
        return bytes(out)


@dataclass
class Assignment:
    layout: Layout
    owner: array.array[int]          # per global page: holder index or -1
    state: bytearray                 # per global page: state of the copy
    # Per global page: digest of the copy (a flat bytearray in tests).
    digests: AssignedDigests | bytearray

    def pages_of(self, holder: int) -> int:
        return self.owner.count(holder)


def assign(layout: Layout, inventories: Sequence[Inventory]) -> Assignment:
    """Three bytes per page (owner, state): the winner's attempt and
    digest stay in its inventory."""
    total = layout.total_pages
    owner = array.array("h", [NONE]) * total
    state = bytearray(total)
    for hi, inv in enumerate(inventories):
        for idx, base in enumerate(layout.bases):
            st = inv.states[idx]
            n = len(st)
            if st.count(0) == n:
                continue
            att = inv.attempts[idx]
            for page in range(n):
                s = st[page]
                if not s:
                    continue
                g = base + page
                o = owner[g]
                # Ties: the earlier holder keeps the page.
                if o == NONE or \
                        att[page] > inventories[o].attempts[idx][page]:
                    owner[g] = hi
                    state[g] = s
    return Assignment(layout, owner, state,
                      AssignedDigests(layout, owner, inventories))


class CpuMeter:
    """Share of a core a thread used over the last ``window`` seconds.

    ``cpu_seconds`` returns the thread's CPU time so far (it updates it
    itself: ``time.thread_time`` only reads the calling thread).
    """

    MIN_SPAN_S = 0.2

    def __init__(self, cpu_seconds: Callable[[], float],
                 window: float = 1.0) -> None:
        self.cpu_seconds = cpu_seconds
        self.window = window
        self.samples: list[tuple[float, float]] = []

    def sample(self) -> float | None:
        """Take a sample; the use since the oldest one in the window, or
        None before two samples ``MIN_SPAN_S`` apart."""
        now, cpu = time.monotonic(), self.cpu_seconds()
        self.samples.append((now, cpu))
        while len(self.samples) > 2 and \
                self.samples[0][0] < now - self.window:
            self.samples.pop(0)
        t0, c0 = self.samples[0]
        if now - t0 < self.MIN_SPAN_S:
            return None
        return (cpu - c0) / (now - t0)


#: Pages per chunk of the planner's prefix sums: one int64 per chunk
#: instead of per page (8 bytes per page per sum), the rest of a query is
#: summed page by page inside one chunk.
CHUNK = 32


class _CostTree:
    """Fenwick tree of per-chunk costs: add at a chunk, sum over chunks."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.t = array.array("q", bytes(8 * (n + 1)))

    def add(self, k: int, v: int) -> None:
        i = k + 1
        t, n = self.t, self.n
        while i <= n:
            t[i] += v
            i += i & -i

    def prefix(self, k: int) -> int:
        """Sum over chunks [0, k)."""
        s, t = 0, self.t
        i = k
        while i > 0:
            s += t[i]
            i -= i & -i
        return s


def page_cost(state: int) -> int:
    return DATA_COST if state == 2 else ZERO_COST


#: Smallest share of the remaining transfer worth giving to the holders:
#: ``rate_holders / (rate_source + rate_holders)`` (see the module doc).
MIN_HOLDER_SHARE = 0.1
#: Share of a core the new destination's stream thread may be busy with
#: before relays stop adding to what it takes in (a relayed page costs it
#: the same CPU as one from the source: no headroom, no gain).
MAX_CPU_BUSY = 0.9


def holders_help(rate_source: float, rate_holders: float,
                 cpu_busy: float | None = None,
                 min_share: float = MIN_HOLDER_SHARE) -> bool:
    """Whether the holders are fast enough, next to the source, to be
    given work at all, and the destination has CPU headroom for them.

    :param cpu_busy: the share of a core the destination's stream
        thread used recently (None: not measured).
    """
    if rate_holders <= 0:
        return False
    if cpu_busy is not None and cpu_busy >= MAX_CPU_BUSY:
        return False
    rs = max(rate_source, 1.0)
    return rate_holders / (rs + rate_holders) >= min_share


def holders_worth_contacting(source_rate: float | None,
                             holder_rates: Sequence[float]) -> bool:
    """Before anything is measured: whether the new destination should
    connect to the holders at all, from the rate hints.

    Why: a holder's inventory costs 19 bytes per page of RAM over the
    holder's link (0.2 s for 512 MiB at 100 Mbit/s), and the source's
    first byte waits for the plan built from it; restarting pays
    nothing of the sort.  Holders the first plan would give nothing
    (:func:`holders_help` at the hinted rates) are therefore not asked.
    Without a hint for the source and every holder nothing is known:
    they are contacted (and the measured rates decide).
    """
    rates = [float(r or 0.0) for r in holder_rates]
    if not source_rate or not rates or not all(rates):
        return True
    return holders_help(float(source_rate), sum(rates))


class FrontierPlanner:
    """Balances the source's first pass against the holders' relays."""

    def __init__(self, assignment: Assignment, remote: set[int]) -> None:
        total = assignment.layout.total_pages
        self.total = total
        self.owner = assignment.owner
        self.state = assignment.state
        self.remote = set(remote)
        nchunks = total // CHUNK + 1
        # Per chunk k: remote-held cost / unheld count of pages < k*CHUNK
        # (int64 per chunk; per page this would cost 16 bytes).
        held = array.array("q", bytes(8 * (nchunks + 1)))
        unheld = array.array("q", bytes(8 * (nchunks + 1)))
        h = u = data = zero = 0
        owner, state = assignment.owner, assignment.state
        for g in range(total):
            if not g % CHUNK:
                held[g // CHUNK] = h
                unheld[g // CHUNK] = u
            o = owner[g]
            if o in remote:
                h += page_cost(state[g])
            elif o == NONE:
                u += 1
            if o != NONE:
                if state[g] == 2:
                    data += 1
                else:
                    zero += 1
        for k in range((total + CHUNK - 1) // CHUNK, nchunks + 1):
            held[k] = h
            unheld[k] = u
        self._held_c = held
        self._unheld_c = unheld
        #: Expected wire bytes of a page nobody holds: priced like the
        #: held pages (their zero share), see the module docstring.
        self.unheld_page_cost = (
            (data * DATA_COST + zero * ZERO_COST) / (data + zero)
            if data + zero else float(DATA_COST))
        self._superseded = _CostTree(nchunks)
        self._is_superseded = bytearray(total)
        self.superseded_pages = 0

    def _held(self, g: int) -> int:
        """Remote-held cost of pages [0, g)."""
        k = g // CHUNK
        s = self._held_c[k]
        owner, state, remote = self.owner, self.state, self.remote
        for i in range(k * CHUNK, g):
            if owner[i] in remote:
                s += page_cost(state[i])
        return s

    def _unheld(self, g: int) -> int:
        """Pages nobody holds in [0, g)."""
        k = g // CHUNK
        return self._unheld_c[k] + \
            self.owner[k * CHUNK:g].count(NONE)

    def _superseded_cost(self, g: int) -> int:
        """Cost of the superseded pages in [0, g)."""
        k = g // CHUNK
        s = self._superseded.prefix(k)
        sup, state = self._is_superseded, self.state
        for i in range(k * CHUNK, g):
            if sup[i]:
                s += page_cost(state[i])
        return s

    def remote_cost(self, lo: int, hi: int) -> int:
        return self._held(hi) - self._held(lo)

    def supersede(self, g: int) -> bool:
        """The source sent page ``g`` itself: a holder need not relay it.

        Returns True if ``g`` is a remote-held page not superseded before.
        """
        if self.owner[g] not in self.remote or self._is_superseded[g]:
            return False
        self._is_superseded[g] = 1
        self._superseded.add(g // CHUNK, page_cost(self.state[g]))
        self.superseded_pages += 1
        return True

    def holder_cost(self, lo: int, hi: int) -> int:
        """What the holders still relay in [lo, hi): held minus superseded."""
        return self._held(hi) - self._held(lo) - (
            self._superseded_cost(hi) - self._superseded_cost(lo))

    def plan(self, s_pos: int, a_pos: int, rate_source: float,
             rate_holders: float, source_page_cost: float | None = None,
             frontier: int | None = None,
             cpu_busy: float | None = None) -> int:
        """Frontier X where both sides finish together.

        :param s_pos: next page of the source's first pass (the number of
            pages once it is over).
        :param a_pos: lowest page the holders have reached (exclusive
            upper end of their remaining work).
        :param source_page_cost: bytes per page nobody holds (default:
            :attr:`unheld_page_cost`).
        :param frontier: the current frontier.  Once the source has passed
            it, the held pages in between are ones it skipped (and kept):
            X is then at least the frontier, and the source's share is
            counted from there.  Default: the source has not passed it.
        :param cpu_busy: the share of a core the destination's stream
            thread used recently (None: not measured), see
            :func:`holders_help`.
        :returns: ``a_pos`` (holders get nothing more) when they are too
            slow to help or the destination has no CPU to spare
            (:func:`holders_help`).
        """
        s_pos = max(0, min(s_pos, self.total))
        lo = s_pos if frontier is None else max(0, min(s_pos, frontier))
        a_pos = max(lo, min(a_pos, self.total))
        if not holders_help(rate_source, rate_holders, cpu_busy):
            # Never worse than restart: the holders get nothing more.
            return a_pos
        rs = max(rate_source, 1.0)
        rh = max(rate_holders, 1.0)
        if source_page_cost is None:
            source_page_cost = self.unheld_page_cost
        u_rem = (self._unheld(self.total) - self._unheld(s_pos)) * \
            source_page_cost
        start = lo

        def source_time(x: int) -> float:
            # Superseded pages below x: the source has sent them already.
            return (self.holder_cost(start, x) + u_rem) / rs

        def holder_time(x: int) -> float:
            return self.holder_cost(x, a_pos) / rh

        hi = a_pos
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
