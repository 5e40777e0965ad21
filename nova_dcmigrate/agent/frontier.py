"""The frontier: which held pages the source sends itself.

After a redirect the holders relay the pages they have from the top of
RAM down, while the source's first pass goes up; the frontier is where
they meet.  The new destination plans it from measured rates
(:class:`FrontierControl`) and moves it while both send; the source
applies each move and confirms it in stream order
(:class:`SourceFrontier`).  A lower frontier is always safe; a raise is
clamped to the lowest held page the source skipped and did not keep.
"""

from __future__ import annotations

import collections
import socket
import threading
import time
from typing import Any
from typing import TYPE_CHECKING

from oslo_log import log as logging

from nova_dcmigrate.agent import exception
from nova_dcmigrate.agent.layout import Layout
from nova_dcmigrate.agent import merge
from nova_dcmigrate.agent import plan as planmod
from nova_dcmigrate.agent import protocol
from nova_dcmigrate.agent.protocol import FrameType
from nova_dcmigrate.agent import relay_wire as wire
from nova_dcmigrate.agent.session import FINAL_STATES
from nova_dcmigrate.agent.session import MigrationSession
from nova_dcmigrate.agent.session import SessionState
from nova_dcmigrate.stream import RamBlock

if TYPE_CHECKING:
    from nova_dcmigrate.agent.page_store import PageStore
    from nova_dcmigrate.agent.source_filter import SourceFilter

LOG = logging.getLogger(__name__)


#: Smallest raise of the frontier worth a round trip to the source
#: (pages; 1 MiB).
RAISE_MIN_PAGES = 256
#: Longest wait after the source's first pass for both rates to be
#: measured before the hints decide whether to ask for kept pages (s).
MEASURE_WAIT_S = 1.0
#: Kept pages per DATA frame when a raise gives them back (256 KiB).
ASSIST_BATCH = 63
#: Page numbers per SKIP frame (8 bytes each).
SKIP_BATCH = 8192


class SourceFrontier(MigrationSession):
    """Source half: skip held pages above the frontier, keep some of them
    (within a budget) so that a raise can give them back.

    A layer of :class:`.source.SourceSession`: the attributes declared
    below are set there.
    """

    # Set by SourceSession.__init__ / _receive_plan.
    frontier: int
    lowest_skip: int
    assist: dict[int, tuple[RamBlock, int, bytes]]
    assist_budget: int
    filter: SourceFilter | None
    _frontier_lock: threading.Lock
    _outbox: collections.deque[
        tuple[int, int, list[tuple[RamBlock, int, bytes]]]]
    _wake_w: socket.socket

    def held_page_below_frontier(self, g: int, block: RamBlock, page: int,
                                 data: memoryview) -> bool:
        """First pass, a page a holder will relay: send it ourselves?

        Called by the filter for every such page; a skipped page is kept
        while the budget allows, else recorded as the raise limit -- under
        the same lock as a raise, which keeps raises exact.
        """
        with self._frontier_lock:
            if g < self.frontier:
                return True
            if len(self.assist) < self.assist_budget:
                self.assist[g] = (block, page, bytes(data))
                self.counters["assist_pages_kept"] = \
                    self.counters.get("assist_pages_kept", 0) + 1
            elif g < self.lowest_skip:
                self.lowest_skip = g
            return False

    def forget_assist(self, g: int) -> None:
        """QEMU sent page ``g`` again with other content: the kept copy is
        stale."""
        with self._frontier_lock:
            self.assist.pop(g, None)

    def _move_frontier(self, conn: protocol.FramedConnection,
                       want: int) -> None:
        """Apply the destination's new frontier; the forward loop confirms
        it (:meth:`_drain_outbox`).

        Lowering is always safe.  A raise is clamped to the lowest held
        page skipped and not kept (the holders stop at the confirmed
        value, so such a page above it would be lost until FINAL); the
        kept pages below the new frontier go out before the confirmation.
        """
        with self._frontier_lock:
            cur = self.frontier
            give: list[tuple[RamBlock, int, bytes]] = []
            if want > cur:
                limit = cur if self.filter is None else \
                    max(cur, self.lowest_skip)
                want = min(want, limit)
                if self.assist and want > cur:
                    mine = sorted(g for g in self.assist if cur <= g < want)
                    give = [self.assist.pop(g) for g in mine]
            self.frontier = want
            self._outbox.append((cur, want, give))
        self.counters["frontier"] = want
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass            # closing: nobody waits for the confirmation

    def _drain_outbox(self, conn: protocol.FramedConnection,
                      f: SourceFilter) -> None:
        """Forward-loop side of :meth:`_move_frontier`: the pages a raise
        gave back, then the confirmation, in stream order."""
        while True:
            with self._frontier_lock:
                if not self._outbox:
                    return
                cur, want, give = self._outbox.popleft()
            c = self.counters
            for i in range(0, len(give), ASSIST_BATCH):
                batch = give[i:i + ASSIST_BATCH]
                if not f.emit_assist(batch):
                    # The switchover began: the holders keep those pages.
                    want = cur
                    break
                out = f.w.take()
                conn.send(FrameType.DATA, out)
                c["bytes_sent"] = c.get("bytes_sent", 0) + len(out)
                c["assist_pages_sent"] = \
                    c.get("assist_pages_sent", 0) + len(batch)
            conn.send(FrameType.FRONTIER, wire.U64.pack(want))


class FrontierControl(MigrationSession):
    """Destination half: plan the frontier and keep source and holders
    told (:mod:`.redirect_merge` runs the relays it steers).

    A layer of :class:`.destination.DestinationSession`: the attributes
    declared below are set there.
    """

    # Set by DestinationSession.__init__ / _run_merge.
    holders: list[dict[str, Any]]
    source_rate: float | None
    split: bool
    pullers: list[merge.RelayPuller]
    feed: merge.QemuFeed | None
    planner: planmod.FrontierPlanner | None
    first_frontier: int
    src_position: int
    src_pass1_done: bool
    frontier: int
    stops: dict[int, int]
    final_sent: bool
    _frontier_requests: collections.deque[int]
    _final_lock: threading.Lock
    relay_done: threading.Event
    src_meter: merge.RateMeter
    relay_meter: merge.RateMeter
    _pass1_at: float
    _raises_futile: bool
    _stream_cpu_s: float

    #: Rate hints said the holders would get nothing: this attempt runs
    #: without them (:meth:`_skip_holders`).
    holders_skipped = False

    if TYPE_CHECKING:
        # In RedirectMerge / DestinationSession.
        store: PageStore
        _inventories: list[planmod.Inventory]

        def _send_final(self) -> None: ...

        def _check_relays_done(self) -> None: ...

        def _mark(self, event: str) -> None: ...

        def _connect_holder(self, index: int, holder: dict[str, Any]
                            ) -> merge.RelayPuller: ...

    def _holders_worth_contacting(self) -> bool:
        """Whether to connect to the holders at all (the optimised split
        only: ``relay-only`` always relays), see
        :func:`.plan.holders_worth_contacting`."""
        if not self.split:
            return True
        rates = [float(h.get("rate") or 0.0) for h in self.holders]
        worth = planmod.holders_worth_contacting(self.source_rate, rates)
        LOG.info("migration %(mid)s attempt %(att)d: rate hints: source "
                 "%(rs)s, holders %(rh)s bytes/s: %(what)s",
                 {"mid": self.migration_id, "att": self.attempt,
                  "rs": self.source_rate, "rh": rates,
                  "what": "holders contacted" if worth else
                  "holders get nothing"})
        return worth

    def _skip_holders(self) -> None:
        """Run this attempt without its holders, as a restart would: no
        relay connection on the source's critical path, no filtering on
        the source (it gets no plan), relays done at once (the
        controller's switchover gate opens).

        With ``count_needed_pages`` (a benchmark aid, off by default) the
        holders' inventories are still read, in the background, only to
        count what this host needed (:meth:`needed_pages`, the
        benchmark's bound); nothing is relayed.
        """
        self.holders_skipped = True
        self._mark("holders_skipped_s")
        self.final_sent = True
        self.relay_done.set()
        if not self.conf.count_needed_pages:
            return
        threading.Thread(target=self._census, daemon=True,
                         name="dst-census-%s" % self.migration_id[:8]
                         ).start()

    def _census(self) -> None:
        """Read every holder's inventory and end its relay with nothing
        relayed (ASSIGN_END, FINAL at the top); the inventories count
        what this host needed.  Never fails the attempt."""
        pullers: list[merge.RelayPuller] = []
        try:
            for i, holder in enumerate(self.holders, start=1):
                p = self._connect_holder(i, holder)
                pullers.append(p)
                assert p.layout is not None
                p.conn.send(FrameType.ASSIGN_END)
                p.conn.send(FrameType.FINAL, wire.U64.pack(
                    p.layout.total_pages) + wire.encode_g_list([]))
            for p in pullers:
                ftype, _payload = p.conn.recv()
                if ftype != FrameType.RELAY_DONE:
                    raise exception.PeerProtocolError(
                        peer=p.conn.peer, reason="expected RELAY_DONE, "
                        "got %s" % ftype.name)
            layout = pullers[0].layout if pullers else None
            # The count is made against this host's final memory: only
            # with the layout of the stream this attempt receives.
            deadline = time.monotonic() + self.conf.connect_timeout
            while self.store.ram_start is None and \
                    self.state not in FINAL_STATES and \
                    time.monotonic() < deadline:
                time.sleep(0.05)
            if layout is None or self.store.ram_start is None:
                return
            mine = Layout.from_start(self.store.ram_start)
            if any(p.layout is None or (p.layout.names, p.layout.lengths)
                   != (mine.names, mine.lengths) for p in pullers):
                return
            local = planmod.Inventory.empty(layout)
            self._inventories = [local] + [
                p.inventory for p in pullers if p.inventory is not None]
            self.frontier = self.first_frontier = layout.total_pages
        except Exception as err:  # noqa: BLE001 - only a count is lost
            LOG.info("migration %(mid)s attempt %(att)d: holders' "
                     "inventories not read (%(err)s): no count of the "
                     "pages needed", {"mid": self.migration_id,
                                      "att": self.attempt, "err": err})
        finally:
            for p in pullers:
                p.conn.close()

    def _expected_rates(self) -> tuple[float, float]:
        """Source and summed holder upload rates for the first frontier.

        Only ratios matter; from the hints when the source and every
        holder have one, else equal.  The plan loop corrects them from
        measured rates as soon as both sides have sent something.
        """
        rates = [float(h.get("rate") or 0.0) for h in self.holders]
        if self.source_rate and rates and all(rates):
            return float(self.source_rate), sum(rates)
        return 1.0, 1.0

    def _holder_rate_hint(self) -> float:
        """The holders' hinted upload rate (bytes/s) if every holder and
        the source have one, else 0."""
        rates = [float(h.get("rate") or 0.0) for h in self.holders]
        if self.source_rate and rates and all(rates):
            return sum(rates)
        return 0.0

    def _plan_loop(self, conn: protocol.FramedConnection) -> None:
        """Re-plan the frontier from measured rates until the source's
        first pass ends; tell holders which pages the source sent itself
        until their relays are done."""
        planner = self.planner
        assert planner is not None
        cpu = planmod.CpuMeter(lambda: self._stream_cpu_s)
        while self.state == SessionState.STREAMING and \
                not self.relay_done.is_set():
            time.sleep(0.05)
            busy = cpu.sample()
            self._send_skips(planner)
            if self.final_sent:
                continue
            lows = [p.lowest for p in self.pullers if p.lowest is not None]
            a_pos = min(lows) if lows else planner.total
            rs, rh = self.src_meter.rate(), self.relay_meter.rate()
            if rh <= 0 and self.frontier >= a_pos:
                # The holders were given nothing (too slow next to the
                # source): no measure of theirs, go by the hint.
                rh = self._holder_rate_hint()
            if self.src_pass1_done:
                if not self._assist_pending(conn, planner, a_pos, rs, rh):
                    self._send_final()
                    self._check_relays_done()
                continue
            if rs <= 0 or rh <= 0 or not self.split:
                continue
            x = planner.plan(self.src_position, a_pos, rs, rh,
                             frontier=self.frontier, cpu_busy=busy)
            if x < self.frontier or (
                    x >= self.frontier + RAISE_MIN_PAGES
                    and not self._raises_futile
                    and not self._frontier_requests):
                self._request_frontier(conn, x)

    def _assist_pending(self, conn: protocol.FramedConnection,
                        planner: planmod.FrontierPlanner, a_pos: int,
                        rs: float, rh: float) -> bool:
        """After the source's first pass: should it take more held pages
        (the ones it kept) before FINAL?  True while a raise is asked for
        or in flight."""
        if self._frontier_requests:
            return True
        if not self.split or self._raises_futile:
            return False
        if rs <= 0 or rh <= 0:
            # No measure yet (a holder not started, or the source idle):
            # wait briefly for one, then go by the hints.
            if time.monotonic() - self._pass1_at < MEASURE_WAIT_S and \
                    planner.holder_cost(self.frontier, a_pos) > 0:
                return True
            rs, rh = self._expected_rates()
        # The source has no first-pass work left: balance the held pages
        # above the frontier between its link and the holders'.
        x = planner.plan(planner.total, a_pos, rs, rh,
                         frontier=self.frontier)
        if x < self.frontier + RAISE_MIN_PAGES:
            return False
        self._request_frontier(conn, x)
        return True

    def _send_skips(self, planner: planmod.FrontierPlanner) -> None:
        """SKIP to each holder the pages of its own the source has sent
        since (they would be dropped here), below where it has reached."""
        feed = self.feed
        if feed is None:
            return
        with feed.cond:
            pages, feed.superseded = feed.superseded, []
        if not pages:
            return
        owner = planner.owner
        per_holder: dict[int, list[int]] = {}
        for g in pages:
            if planner.supersede(g):
                per_holder.setdefault(owner[g], []).append(g)
        for p in self.pullers:
            mine = per_holder.get(p.index)
            if not mine or p.done.is_set():
                continue
            low = p.lowest
            if low is not None:
                mine = [g for g in mine if g < low]
            for i in range(0, len(mine), SKIP_BATCH):
                try:
                    p.conn.send(FrameType.SKIP, wire.encode_g_list(
                        mine[i:i + SKIP_BATCH]))
                except exception.AgentError:
                    break       # the relay loop reports the lost holder
            self.counters["pages_skip_sent"] = \
                self.counters.get("pages_skip_sent", 0) + len(mine)

    def _request_frontier(self, conn: protocol.FramedConnection,
                          x: int) -> None:
        """Ask the source to move the frontier to ``x``.

        A lower frontier is safe at once: holders are told to go further
        down before the source skips more.  A higher one only reaches the
        holders once the source confirmed it (it may clamp it: pages it
        already skipped must still be relayed).  At most one raise is in
        flight.
        """
        with self._final_lock:
            if self.final_sent:
                return
            self._frontier_requests.append(x)
            self.frontier = x
            self.counters["frontier"] = x
            conn.send(FrameType.FRONTIER, wire.U64.pack(x))
            self._stop_holders_at(x, lower_only=True)

    def _frontier_confirmed(self, conn: protocol.FramedConnection,
                            applied: int) -> None:
        """The source applied a frontier: holders may stop there (or
        lower, while later requests are still unconfirmed)."""
        with self._final_lock:
            if not self._frontier_requests:
                raise exception.PeerProtocolError(
                    peer=conn.peer, reason="unsolicited FRONTIER from the "
                    "source")
            asked = self._frontier_requests.popleft()
            if applied < asked:
                # Clamped: the source skipped a page it did not keep at
                # ``applied``; no later raise can pass it.
                self._raises_futile = True
            if self.final_sent:
                return
            if not self._frontier_requests:
                self.frontier = applied
                self.counters["frontier"] = applied
            self._stop_holders_at(min([applied, *self._frontier_requests]),
                                  lower_only=False)

    def _stop_holders_at(self, stop: int, lower_only: bool) -> None:
        for p in self.pullers:
            cur = self.stops.get(p.index, 0)
            if p.done.is_set() or stop == cur or (lower_only and stop > cur):
                continue
            p.conn.send(FrameType.STOP_AT, wire.U64.pack(stop))
            self.stops[p.index] = stop
