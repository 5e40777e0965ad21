"""Holder side of a redirect: an agent relays the pages it stored.

After a redirect the old destination's QEMU is gone, but its agent still
has every page it received.  The new destination's agent connects here
(RELAY channel, authenticated with the migration's secret), receives this
store's inventory, tells us which pages are ours to send, and then pulls
them: downward from the top, pausing at the frontier it sets, until it
sends FINAL with any pages the source skipped below the frontier.  Pages
the source sent itself in the meantime arrive as SKIP lists and are not
relayed (the destination would drop them).

The store must be frozen (no attempt writing into it) while relaying.
"""

from __future__ import annotations

import enum
import threading
from typing import Any

from oslo_log import log as logging

from nova_dcmigrate.agent import exception
from nova_dcmigrate.agent.layout import Layout
from nova_dcmigrate.agent.page_store import PageStore
from nova_dcmigrate.agent import protocol
from nova_dcmigrate.agent.protocol import FrameType
from nova_dcmigrate.agent import relay_wire as wire
from nova_dcmigrate.exception import MigrationStateError

LOG = logging.getLogger(__name__)

BATCH_BYTES = 256 * 1024


class RelayState(enum.Enum):
    INVENTORY = "inventory"    # sending the inventory, reading ASSIGN
    RELAYING = "relaying"      # sending assigned pages
    DONE = "done"              # RELAY_DONE sent, peer closed
    FAILED = "failed"          # error; connection closed


#: Every state a relay may enter from each state; nothing else.
TRANSITIONS: dict[RelayState, frozenset[RelayState]] = {
    RelayState.INVENTORY: frozenset({RelayState.RELAYING,
                                     RelayState.FAILED}),
    RelayState.RELAYING: frozenset({RelayState.DONE, RelayState.FAILED}),
    RelayState.DONE: frozenset(),
    RelayState.FAILED: frozenset(),
}


class HolderRelay:
    def __init__(self, conf: Any, migration_id: str, store: PageStore,
                 conn: protocol.FramedConnection) -> None:
        self.conf = conf
        self.migration_id = migration_id
        self.store = store
        self.conn = conn
        self.attempt = conn.hello.attempt
        assert store.ram_start is not None
        self.layout = Layout.from_start(store.ram_start)
        self._cond = threading.Condition()
        self._stop_at = self.layout.total_pages   # nothing until planned
        self._final: tuple[int, list[int]] | None = None
        self._closed = False
        self.error: str | None = None
        self.pages_sent = 0
        self.bytes_sent = 0
        self.pages_skipped = 0
        self._assigned: list[bytearray] = []
        self._state = RelayState.INVENTORY
        self.done = threading.Event()

    @property
    def state(self) -> str:
        """The relay's state, as ``status()`` reports it."""
        return self._state.value

    def _move(self, new: RelayState) -> None:
        """Enter ``new`` if :data:`TRANSITIONS` allows it.

        :raises MigrationStateError: it does not.
        """
        with self._cond:
            if new not in TRANSITIONS[self._state]:
                raise MigrationStateError(
                    migration_id=self.migration_id, state=self._state.value,
                    operation="relay entering %s" % new.value,
                    required="/".join(sorted(
                        s.value for s, targets in TRANSITIONS.items()
                        if new in targets)))
            self._state = new

    def start(self) -> None:
        threading.Thread(target=self._guarded, name="holder-%s"
                         % self.migration_id[:8], daemon=True).start()

    def _guarded(self) -> None:
        try:
            self._run()
            self._move(RelayState.DONE)
        except exception.AgentError as err:
            self.error = str(err)
            self._move(RelayState.FAILED)
            LOG.warning("migration %(mid)s: relay to %(peer)s ended: "
                        "%(err)s", {"mid": self.migration_id,
                                    "peer": self.conn.peer, "err": err})
        except OSError as err:
            self.error = str(err)
            self._move(RelayState.FAILED)
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            self.conn.close()
            self.done.set()

    def abort(self) -> None:
        self.conn.close()

    def status(self) -> dict[str, Any]:
        return {"peer": self.conn.peer, "attempt": self.attempt,
                "state": self.state, "error": self.error,
                "pages_sent": self.pages_sent,
                "pages_skipped": self.pages_skipped,
                "bytes_sent": self.bytes_sent}

    # -- protocol ----------------------------------------------------------
    def _run(self) -> None:
        conn = self.conn
        conn.send(FrameType.LAYOUT, self.layout.to_json())
        for idx, first, states, attempts, digests in \
                self.store.inventory_ranges():
            if states.count(0) == len(states):
                # Nothing held there: the new destination's inventory of
                # us starts empty, and it waits for ours before it plans.
                continue
            conn.send(FrameType.INVENTORY, wire.encode_inventory(
                idx, first, states, attempts, digests))
        conn.send(FrameType.INVENTORY_END)
        assigned = [bytearray(n) for n in self.layout.npages]
        self._assigned = assigned
        while True:
            ftype, payload = conn.recv()
            if ftype == FrameType.ASSIGN:
                idx, first, marks = wire.decode_assign(payload, self.layout,
                                                       conn.peer)
                assigned[idx][first:first + len(marks)] = marks
            elif ftype == FrameType.ASSIGN_END:
                break
            else:
                raise exception.PeerProtocolError(
                    peer=conn.peer, reason="expected ASSIGN, got %s"
                    % ftype.name)
        self._move(RelayState.RELAYING)
        threading.Thread(target=self._control_loop, daemon=True,
                         name="holder-ctl").start()
        self._relay(assigned)

    def _control_loop(self) -> None:
        try:
            while True:
                ftype, payload = self.conn.recv()
                with self._cond:
                    if ftype == FrameType.STOP_AT:
                        self._stop_at = wire.U64.unpack(payload)[0]
                    elif ftype == FrameType.FINAL:
                        stop = wire.U64.unpack_from(payload)[0]
                        extra = wire.decode_g_list(payload[8:], self.layout,
                                                   self.conn.peer)
                        self._final = (stop, extra)
                    elif ftype == FrameType.SKIP:
                        self._skip(wire.decode_g_list(payload, self.layout,
                                                      self.conn.peer))
                    elif ftype == FrameType.ABORT:
                        self._closed = True
                    else:
                        raise exception.PeerProtocolError(
                            peer=self.conn.peer,
                            reason="unexpected %s" % ftype.name)
                    self._cond.notify_all()
        except exception.AgentError:
            with self._cond:
                self._closed = True
                self._cond.notify_all()

    def _skip(self, pages: list[int]) -> None:
        """Unassign pages the destination got from the source (caller
        holds ``_cond``); the relay loop reads the marks as it goes."""
        assigned, locate = self._assigned, self.layout.locate
        for g in pages:
            idx, page = locate(g)
            if assigned[idx][page]:
                assigned[idx][page] = 0
                self.pages_skipped += 1

    def _relay(self, assigned: list[bytearray]) -> None:
        batch = bytearray()
        layout = self.layout
        for idx in range(len(layout.npages) - 1, -1, -1):
            marks = assigned[idx]
            base = layout.bases[idx]
            for page in range(len(marks) - 1, -1, -1):
                if not marks[page]:
                    continue
                g = base + page
                if not self._may_send(g, batch):
                    # FINAL said this is below the final stop.
                    self._flush(batch)
                    return self._finish(assigned)
                self._append(batch, idx, page)
                if len(batch) >= BATCH_BYTES:
                    self._flush(batch)
        self._flush(batch)
        self._finish(assigned)

    def _may_send(self, g: int, batch: bytearray) -> bool:
        with self._cond:
            while True:
                if self._closed:
                    raise exception.PeerClosed(peer=self.conn.peer,
                                               reason="relay closed")
                if self._final is not None:
                    return g >= self._final[0]
                if g >= self._stop_at:
                    return True
                if batch:
                    break
                self._cond.wait(1.0)
        # Waiting at the frontier: push out what we have first.
        self._flush(batch)
        return self._may_send(g, batch)

    def _append(self, batch: bytearray, idx: int, page: int) -> None:
        state = self.store.state_at(idx, page)
        if state == 2:
            batch += wire.ENTRY.pack(idx, page, wire.STATE_DATA)
            batch += self.store.page_at(idx, page)      # type: ignore
        else:
            batch += wire.ENTRY.pack(idx, page, wire.STATE_ZERO)
        self.pages_sent += 1

    def _flush(self, batch: bytearray) -> None:
        if batch:
            self.conn.send(FrameType.RELAY_PAGES, batch)
            self.bytes_sent += len(batch)
            del batch[:]

    def _finish(self, assigned: list[bytearray]) -> None:
        with self._cond:
            while self._final is None:
                if self._closed:
                    raise exception.PeerClosed(peer=self.conn.peer,
                                               reason="relay closed")
                self._cond.wait(1.0)
            _stop, extra = self._final
        batch = bytearray()
        for g in extra:
            idx, page = self.layout.locate(g)
            if assigned[idx][page] and self.store.state_at(idx, page):
                self._append(batch, idx, page)
                if len(batch) >= BATCH_BYTES:
                    self._flush(batch)
        self._flush(batch)
        self.conn.send(FrameType.RELAY_DONE)
        LOG.info("migration %(mid)s: relayed %(n)d pages (%(b)d bytes) to "
                 "%(peer)s, skipped %(s)d the source sent",
                 {"mid": self.migration_id, "n": self.pages_sent,
                  "b": self.bytes_sent, "peer": self.conn.peer,
                  "s": self.pages_skipped})
        # Wait for the peer to close (it owns the end of the relay).
        with self._cond:
            while not self._closed:
                self._cond.wait(1.0)
