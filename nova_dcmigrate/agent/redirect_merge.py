"""Destination side of a redirect or resume: merge mode of an attempt.

The new destination connects to the holders, plans with them who sends
which page (:mod:`.plan`), tells the source what to drop, and feeds QEMU
one stream merged from the source's and the holders' pages (the building
blocks are in :mod:`.merge`; the frontier between the source and the
holders is steered by :mod:`.frontier`).

With ``[dcmigrate_agent] connect_holders_early`` (on by default) the
holders are connected and their inventories read as soon as
the attempt is prepared (:meth:`RedirectMerge.connect_holders_early`),
while libvirt still stops the old attempt and starts the destination
QEMU, so the plan is ready when the source's stream arrives (issue 13,
part 4).
"""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from typing import Any
from typing import Iterable
from typing import Iterator
from typing import NoReturn
from typing import TYPE_CHECKING

from oslo_log import log as logging

from nova_dcmigrate.agent import exception
from nova_dcmigrate.agent import expected
from nova_dcmigrate.agent.frontier import FrontierControl
from nova_dcmigrate.agent.layout import Layout
from nova_dcmigrate.agent import merge
from nova_dcmigrate.agent import page_store
from nova_dcmigrate.agent.page_store import DIGEST_LEN
from nova_dcmigrate.agent.page_store import PageStore
from nova_dcmigrate.agent import plan as planmod
from nova_dcmigrate.agent import protocol
from nova_dcmigrate.agent.protocol import FrameType
from nova_dcmigrate.agent import relay_wire as wire
from nova_dcmigrate.agent.session import FINAL_STATES
from nova_dcmigrate.agent.session import SessionState
from nova_dcmigrate.stream import RamStart
from nova_dcmigrate.stream import StreamReader

LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class _EarlyPlan:
    """Plan computed before the source attached (see
    :meth:`RedirectMerge.connect_holders_early`)."""

    layout: Layout
    inventories: list[planmod.Inventory]
    assignment: planmod.Assignment
    expected: list[bytes]


class RedirectMerge(FrontierControl):
    """Merge mode of :class:`.destination.DestinationSession`.

    A layer of that class (one concept per module): the attributes and
    methods declared below are set and defined there.
    """

    # Set by DestinationSession.__init__ / _run_merge.
    store: PageStore
    assignment: planmod.Assignment | None
    first_frontier: int
    final_extra_pages: int
    _inventories: list[planmod.Inventory]
    _needed: dict[str, int] | None
    timeline: dict[str, float]

    if TYPE_CHECKING:
        # In DestinationSession.
        def _ack(self, conn: protocol.FramedConnection,
                 reader: StreamReader) -> None: ...

        def _data_eof(self, conn: protocol.FramedConnection,
                      reader: StreamReader, qsock: socket.socket
                      ) -> None: ...

        def _unexpected_source_frame(self, conn: protocol.FramedConnection,
                                     ftype: FrameType, payload: Any
                                     ) -> NoReturn: ...

        def _return_loop(self, conn: protocol.FramedConnection,
                         qsock: socket.socket) -> None: ...

    #: Pullers connected before the source attached (None: not tried or
    #: failed; the merge then connects as it always did).
    _early_pullers: list[merge.RelayPuller] | None = None
    _early_plan: _EarlyPlan | None = None
    _early_done: threading.Event | None = None

    def connect_holders_early(self) -> None:
        """Connect to the holders and read their inventories now, in the
        background, so that the plan is ready when the source attaches.

        Why: otherwise the holder handshakes and inventories (a page
        digest each) start only once the destination QEMU is up and the
        source is streaming, and the source's link idles meanwhile.  A
        holder still being written (its attempt is being stopped) refuses
        the relay; the connection is retried until the source attaches.
        """
        if not self.holders or self._early_done is not None or (
                not self._store_has_pages()
                and not self._holders_worth_contacting()):
            return
        self._early_done = threading.Event()
        threading.Thread(target=self._early_connect, daemon=True,
                         name="dst-holders-%s" % self.migration_id[:8]
                         ).start()

    def _early_connect(self) -> None:
        assert self._early_done is not None
        deadline = time.monotonic() + self.conf.connect_timeout
        delay = 0.05
        try:
            while self.state == SessionState.PREPARED:
                pullers: list[merge.RelayPuller] = []
                try:
                    for i, holder in enumerate(self.holders, start=1):
                        pullers.append(self._connect_holder(i, holder))
                    self._early_pullers = pullers
                    self._early_plan = self._plan_without_local(pullers)
                    LOG.debug("migration %(mid)s attempt %(att)d: holders "
                              "connected before the source",
                              {"mid": self.migration_id,
                               "att": self.attempt})
                    return
                except Exception as err:  # noqa: BLE001 - retried below
                    for p in pullers:
                        p.conn.close()
                    if time.monotonic() + delay > deadline:
                        LOG.debug("migration %(mid)s attempt %(att)d: "
                                  "holders not connected early: %(err)s",
                                  {"mid": self.migration_id,
                                   "att": self.attempt, "err": err})
                        return
                time.sleep(delay)
                delay = min(0.2, delay * 1.5)
        finally:
            self._early_done.set()

    def _plan_without_local(self, pullers: list[merge.RelayPuller]
                            ) -> _EarlyPlan | None:
        """The assignment and the ``EXPECTED`` frames, computed before
        the source attaches -- only when this host holds no page of the
        migration (its own inventory is then empty whatever the store
        settles) and every holder has the same layout."""
        if self._store_has_pages() or not pullers:
            return None
        layout = pullers[0].layout
        assert layout is not None
        for p in pullers[1:]:
            assert p.layout is not None
            if (p.layout.names, p.layout.lengths) != (layout.names,
                                                      layout.lengths):
                return None
        inventories = [planmod.Inventory.empty(layout)]
        for p in pullers:
            assert p.inventory is not None
            inventories.append(p.inventory)
        assignment = planmod.assign(layout, inventories)
        return _EarlyPlan(layout, inventories, assignment,
                          list(self._expected_frames(layout, assignment)))

    def _expected_frames(self, layout: Layout,
                         assignment: planmod.Assignment
                         ) -> Iterator[bytes]:
        """``EXPECTED`` payloads: what this host will hold, and who
        holds it, for the source's filter (generated one range at a time:
        kept whole only when prepared ahead)."""
        return expected.expected_payloads(layout, assignment)

    def _take_early_pullers(self) -> list[merge.RelayPuller] | None:
        """The early pullers, once their thread is done (None: connect
        now, as without them)."""
        if self._early_done is None:
            return None
        self._early_done.wait(self.conf.connect_timeout)
        pullers, self._early_pullers = self._early_pullers, None
        return pullers

    def _store_has_pages(self) -> bool:
        c = self.store.counters()
        return self.store.configured and (c.pages + c.zero_pages) > 0

    def _connect_holder(self, index: int, holder: dict[str, Any]
                        ) -> merge.RelayPuller:
        addr, port = str(holder["address"]), int(holder["port"])
        peer = "%s:%d" % (addr, port)
        try:
            sock = self._connect_tcp(addr, port, self.conf.connect_timeout)
        except exception.PeerAuthError:
            raise
        except OSError as err:
            raise exception.PeerConnectError(peer=peer,
                                             reason=str(err)) from err
        sock.settimeout(self.conf.connect_timeout)
        conn = protocol.connect(sock, peer, self.secret,
                                protocol.Channel.RELAY, self.migration_id,
                                self.attempt)
        puller = merge.RelayPuller(index, str(holder.get("host", peer)),
                                   conn)
        puller.read_inventory(self.store.check_layout)
        sock.settimeout(None)
        return puller

    def _local_inventory(self, layout: Layout) -> planmod.Inventory:
        inv = planmod.Inventory.empty(layout)
        if self._store_has_pages():
            assert self.store.ram_start is not None
            mine = Layout.from_start(self.store.ram_start)
            if (mine.names, mine.lengths) == (layout.names, layout.lengths):
                for rng in self.store.inventory_ranges():
                    inv.add_range(*rng)
        return inv

    def _run_merge(self, conn: protocol.FramedConnection,
                   qsock: socket.socket) -> None:
        layout: Layout | None = None
        early = self._take_early_pullers()
        plan, self._early_plan = self._early_plan, None
        if not early or self._store_has_pages():
            plan = None
        for i, holder in enumerate(self.holders, start=1):
            p = early[i - 1] if early else self._connect_holder(i, holder)
            assert p.layout is not None
            if layout is None:
                layout = p.layout
            elif (p.layout.names, p.layout.lengths) != \
                    (layout.names, layout.lengths):
                # Flagged in the status: the controller retries without it.
                p.failed = "different RAM layout"
                self.pullers.append(p)
                raise exception.SessionFailed(
                    migration_id=self.migration_id,
                    reason="holder %s has a different RAM layout" % p.host)
            self.pullers.append(p)
        if layout is None:
            assert self.store.ram_start is not None
            layout = Layout.from_start(self.store.ram_start)
        if plan is not None:
            inventories, assignment = plan.inventories, plan.assignment
            expected = plan.expected
        else:
            inventories = [self._local_inventory(layout)]
            for p in self.pullers:
                assert p.inventory is not None
                inventories.append(p.inventory)
            assignment = planmod.assign(layout, inventories)
            expected = None
        self._inventories = inventories
        self.assignment = assignment
        remote = set(range(1, len(self.pullers) + 1))
        self.planner = planmod.FrontierPlanner(assignment, remote)
        rs, rh = self._expected_rates()
        self.frontier = self.planner.plan(0, layout.total_pages, rs, rh) \
            if remote and self.split else 0
        self.first_frontier = self.frontier
        # Tell the source what we will hold, and who holds it.
        conn.send(FrameType.LAYOUT, layout.to_json())
        frames: Iterable[bytes] = (
            expected if expected is not None
            else self._expected_frames(layout, assignment))
        for payload in frames:
            conn.send(FrameType.EXPECTED, payload)
        conn.send(FrameType.FRONTIER, wire.U64.pack(self.frontier))
        for p in self.pullers:
            p.send_assignment(assignment)
            p.conn.send(FrameType.STOP_AT, wire.U64.pack(self.frontier))
            self.stops[p.index] = self.frontier
        LOG.info("migration %(mid)s attempt %(att)d: redirect plan: "
                 "%(local)d pages held here, %(remote)s from holders, "
                 "%(none)d from the source only; frontier %(f)d",
                 {"mid": self.migration_id, "att": self.attempt,
                  "local": assignment.pages_of(merge.LOCAL),
                  "remote": {p.host: assignment.pages_of(p.index)
                             for p in self.pullers},
                  "none": assignment.pages_of(planmod.NONE),
                  "f": self.frontier})
        self.feed = merge.QemuFeed(qsock, self.store, self.attempt)
        self.feed.owner = assignment.owner
        self._transition(SessionState.STREAMING, {SessionState.CONNECTING})
        conn.send(FrameType.READY)
        self._spawn("dst-ret", self._return_loop, conn, qsock)
        for p in self.pullers:
            self._spawn("dst-relay", self._relay_loop, p)
        if self.pullers:
            self._spawn("dst-plan", self._plan_loop, conn)
        else:
            self.relay_done.set()
        try:
            self._merge_forward_loop(conn)
        except exception.PeerClosed as err:
            raise exception.SessionFailed(
                migration_id=self.migration_id,
                reason="source agent connection lost: %s" % err) from err

    def _inject_local(self, start: RamStart) -> None:
        feed, assignment = self.feed, self.assignment
        assert feed is not None and assignment is not None
        layout = Layout.from_start(start)
        if (layout.names, layout.lengths) != (assignment.layout.names,
                                              assignment.layout.lengths):
            raise exception.SessionFailed(
                migration_id=self.migration_id,
                reason="the source's RAM layout differs from the held "
                       "pages' layout")
        store = self.store
        batch: list[tuple[int, int, Any]] = []
        owner = assignment.owner
        for idx, base in enumerate(layout.bases):
            for page in range(layout.npages[idx]):
                if owner[base + page] == merge.LOCAL:
                    batch.append((idx, page, store.page_at(idx, page)))
                    if len(batch) >= 256:
                        feed.inject(batch, local=True)
                        batch = []
        if batch:
            feed.inject(batch, local=True)

    def _merge_forward_loop(self, conn: protocol.FramedConnection) -> None:
        feed = self.feed
        assert feed is not None
        visitor = merge.MergeVisitor(feed, self._inject_local,
                                     self._before_switchover)
        reader = StreamReader(visitor)
        c = self.counters
        ack_every = self.conf.ack_interval
        next_ack = time.monotonic() + ack_every
        while True:
            ftype, payload = conn.recv(into=reader.get_buffer)
            if ftype == FrameType.DATA:
                n = len(payload)
                visitor.chunk_begin()
                try:
                    reader.buffer_updated(n)
                finally:
                    visitor.chunk_end()
                c["stream_bytes"] += n
                self.src_meter.add(n)
                self._stream_cpu_s = time.thread_time()
                now = time.monotonic()
                if now >= next_ack:
                    next_ack = now + ack_every
                    self._ack(conn, reader)
            elif ftype == FrameType.PROGRESS:
                pos, covered, done = wire.PROGRESS.unpack(payload)
                self.src_position = pos
                if done and not self.src_pass1_done:
                    self.src_pass1_done = True
                    self._pass1_at = time.monotonic()
                    self._mark("pass1_done_s")
                    LOG.info("migration %(mid)s attempt %(att)d: source "
                             "finished its first pass",
                             {"mid": self.migration_id, "att": self.attempt})
            elif ftype == FrameType.FRONTIER:
                self._frontier_confirmed(conn, wire.U64.unpack(payload)[0])
            elif ftype == FrameType.DATA_EOF:
                self._data_eof(conn, reader, feed.qsock)
                return
            else:
                self._unexpected_source_frame(conn, ftype, payload)

    def _relay_loop(self, p: merge.RelayPuller) -> None:
        feed, layout = self.feed, p.layout
        assert feed is not None and layout is not None
        inv = p.inventory
        assert inv is not None

        def attempt_of(idx: int, page: int) -> int:
            return int(inv.attempts[idx][page])

        with feed.cond:
            while feed.start is None and self.state not in FINAL_STATES:
                feed.cond.wait(0.5)
        try:
            while True:
                ftype, payload = p.conn.recv()
                if ftype == FrameType.RELAY_PAGES:
                    entries = list(wire.decode_pages(payload, layout,
                                                     p.conn.peer))
                    p.pages += len(entries)
                    p.bytes += len(payload)
                    self.relay_meter.add(len(payload))
                    if entries:
                        low = layout.bases[entries[-1][0]] + entries[-1][1]
                        p.lowest = low if p.lowest is None else \
                            min(p.lowest, low)
                    inj, drop = feed.inject(entries, attempt_of)
                    p.injected += inj
                    p.dropped += drop
                elif ftype == FrameType.RELAY_DONE:
                    p.done.set()
                    self._check_relays_done()
                    return
                else:
                    raise exception.PeerProtocolError(
                        peer=p.conn.peer, reason="unexpected %s from holder"
                        % ftype.name)
        except exception.AgentError as err:
            p.failed = str(err)
            p.done.set()
            if self.state not in FINAL_STATES:
                # Pages the source skipped may now be missing: this attempt
                # cannot finish exactly; the controller retries without
                # this holder.
                self.fail("relay from holder %s lost: %s" % (p.host, err))

    def _missing(self, holder: int) -> list[int]:
        feed, assignment = self.feed, self.assignment
        assert feed is not None and assignment is not None
        owner = assignment.owner
        with feed.cond:
            sent, rel = feed.sent_by_src, feed.relayed
            if not sent:
                return [g for g in range(len(owner)) if owner[g] == holder]
            return [g for g in range(len(owner))
                    if owner[g] == holder and not sent[g] and not rel[g]]

    def _send_final(self) -> None:
        with self._final_lock:
            if self.final_sent:
                return
            self._send_final_locked()
            self.final_sent = True

    def _send_final_locked(self) -> None:
        for p in self.pullers:
            stop = self.stops.get(p.index, 0)
            extra = [g for g in self._missing(p.index) if g < stop]
            self.final_extra_pages += len(extra)
            p.conn.send(FrameType.FINAL, wire.U64.pack(stop) +
                        wire.encode_g_list(extra))
            LOG.info("migration %(mid)s attempt %(att)d: FINAL to %(h)s: "
                     "stop %(stop)d, %(n)d extra pages",
                     {"mid": self.migration_id, "att": self.attempt,
                      "h": p.host, "stop": stop, "n": len(extra)})

    def _check_relays_done(self) -> None:
        if self.final_sent and all(p.done.is_set() for p in self.pullers) \
                and not any(p.failed for p in self.pullers):
            self._mark("relays_done_s")
            self.relay_done.set()

    def _mark(self, event: str) -> None:
        """Seconds since the session started, once per event: shows
        whether the source and the holders finished together."""
        if event not in self.timeline and self.started_at is not None:
            self.timeline[event] = round(time.monotonic() - self.started_at,
                                         3)

    def _before_switchover(self) -> None:
        """Runs before SWITCHOVER_START/END(ram) reach QEMU: every page
        the destination needs from holders must be in by then."""
        if not self.pullers:
            return
        self._send_final()
        deadline = time.monotonic() + self.conf.session_timeout
        while not all(p.done.is_set() for p in self.pullers):
            if self.state in FINAL_STATES:
                raise exception.SessionFailed(
                    migration_id=self.migration_id, reason=self.error or
                    "session ended while waiting for relays")
            if time.monotonic() > deadline:
                raise exception.SessionFailed(
                    migration_id=self.migration_id,
                    reason="relays did not finish before switchover")
            time.sleep(0.01)
        for p in self.pullers:
            if p.failed:
                raise exception.SessionFailed(
                    migration_id=self.migration_id,
                    reason="relay from holder %s failed: %s"
                    % (p.host, p.failed))
            missing = self._missing(p.index)
            if missing:
                p.failed = "%d pages not delivered" % len(missing)
                raise exception.SessionFailed(
                    migration_id=self.migration_id,
                    reason="holder %s did not deliver %d pages"
                    % (p.host, len(missing)))
        self._check_relays_done()

    def _wait_relays_for_ack(self) -> bool:
        """Block the return path until every relayed page is in."""
        LOG.info("migration %(mid)s attempt %(att)d: holding the "
                 "destination's switchover ack until the relays are done",
                 {"mid": self.migration_id, "att": self.attempt})
        while not self.relay_done.wait(0.1):
            if self.state in FINAL_STATES:
                return False
        return True

    def needed_pages(self) -> dict[str, int] | None:
        """What had to reach this host after the redirect, by final
        content (for the benchmark's bound, once completed).

        ``nonzero``: pages whose final content is not zero;
        ``source_only``: those whose final content no holder had at the
        redirect (only the source could send them); ``held``: those a
        remote holder had; ``local``: those this host had itself.  It
        does not depend on how the attempt sent them, so a wasteful
        transfer cannot raise its own bound.
        """
        if self.state != SessionState.COMPLETED or not self._inventories:
            return self._needed
        if self._needed is not None:
            return self._needed
        invs = self._inventories
        counts = {"nonzero": 0, "source_only": 0, "held": 0, "local": 0}
        for idx, first, states, _att, digests in \
                self.store.inventory_ranges():
            for i, st in enumerate(states):
                if st != page_store.DATA:
                    continue
                counts["nonzero"] += 1
                page = first + i
                d = digests[i * DIGEST_LEN:(i + 1) * DIGEST_LEN]
                lo, hi = page * DIGEST_LEN, (page + 1) * DIGEST_LEN
                found = [h for h, inv in enumerate(invs)
                         if inv.states[idx][page] == page_store.DATA
                         and inv.digests[idx][lo:hi] == d]
                if not found:
                    counts["source_only"] += 1
                elif found[0] == merge.LOCAL:
                    counts["local"] += 1
                else:
                    counts["held"] += 1
        self._needed = counts
        return counts
