"""Destination side of an attempt: source agent -> this agent -> QEMU.

The destination session takes the authenticated peer connection, connects
to the local destination QEMU's UNIX socket, parses the stream into the
migration's page store and feeds QEMU.  When it has holders, or pages of
an earlier attempt, it runs in merge mode (:mod:`.redirect_merge`).
"""

from __future__ import annotations

import collections
import socket
import threading
import time
from typing import Any
from typing import NoReturn

from oslo_log import log as logging

from nova_dcmigrate.agent import exception
from nova_dcmigrate.agent import local_socket
from nova_dcmigrate.agent import merge
from nova_dcmigrate.agent.page_store import PageStore
from nova_dcmigrate.agent import plan as planmod
from nova_dcmigrate.agent import protocol
from nova_dcmigrate.agent.protocol import FrameType
from nova_dcmigrate.agent import ram_backing
from nova_dcmigrate.agent.redirect_merge import RedirectMerge
from nova_dcmigrate.agent import return_gate
from nova_dcmigrate.agent.session import FINAL_STATES
from nova_dcmigrate.agent.session import Role
from nova_dcmigrate.agent.session import SessionState
from nova_dcmigrate.agent.session import sync_counters
from nova_dcmigrate.agent.session import tune_socket
from nova_dcmigrate.agent.tls import PeerTLS
from nova_dcmigrate.stream import RamBlock
from nova_dcmigrate.stream import RamStart
from nova_dcmigrate.stream import StreamReader
from nova_dcmigrate.stream import StreamVisitor
from nova_dcmigrate.stream import fastpath

LOG = logging.getLogger(__name__)


class StoreVisitor(StreamVisitor):
    """Destination: keeps every received page in the page store."""

    def __init__(self, store: PageStore) -> None:
        self.store = store
        if fastpath.native is not None:
            self.fast_records = self._fast_records

    def _fast_records(self, buf: bytearray, pos: int, end: int,
                      block: RamBlock) -> tuple[int, int, int]:
        return self.store.put_records(block, buf, pos, end)

    def on_ram_start(self, start: RamStart) -> None:
        self.store.configure(start)

    def on_page(self, block: RamBlock, page: int, data: memoryview) -> None:
        self.store.put_page(block, page, data)

    def on_zero(self, block: RamBlock, page: int) -> None:
        self.store.put_zero(block, page)


class DestinationSession(RedirectMerge):
    """Destination agent -> local QEMU, keeping every page in the store."""

    role = Role.DESTINATION

    def __init__(self, conf: Any, migration_id: str, secret: str,
                 attempt: int, store: PageStore,
                 holders: list[dict[str, Any]] | None = None,
                 split: bool = True,
                 source_rate: float | None = None,
                 tls: PeerTLS | None = None) -> None:
        super().__init__(conf, migration_id, secret, attempt, tls)
        self.store = store
        self.holders = list(holders or [])
        # Expected upload rate of the source (bytes/s), for the first plan.
        self.source_rate = source_rate
        # False: relay only -- the source drops every page a holder has,
        # holders relay all of them (no optimised split).
        self.split = split
        self._stream_done = False
        self._return_done = False
        #: Why the QEMU's RAM could not be held (None: held or not tried).
        self.backing_error: str | None = None
        # Redirect state (merge mode).
        self.pullers: list[merge.RelayPuller] = []
        self.feed: merge.QemuFeed | None = None
        self.assignment: planmod.Assignment | None = None
        self.planner: planmod.FrontierPlanner | None = None
        self.src_position = 0
        self.src_pass1_done = False
        self.frontier = 0
        self.stops: dict[int, int] = {}
        self.final_sent = False
        self.final_extra_pages = 0
        # Frontiers sent to the source and not yet confirmed, oldest first.
        self._frontier_requests: collections.deque[int] = \
            collections.deque()
        self._final_lock = threading.Lock()
        self.relay_done = threading.Event()
        self.src_meter = merge.RateMeter()
        self.relay_meter = merge.RateMeter()
        self.first_frontier = 0
        self._pass1_at = 0.0
        # A raise came back clamped: the source skipped a page it did not
        # keep, and no later raise can pass it.
        self._raises_futile = False
        # CPU seconds of the stream thread so far (its headroom decides
        # whether holders can help).
        self._stream_cpu_s = 0.0
        # What every host held at the redirect (index 0: this host).
        self._inventories: list[planmod.Inventory] = []
        self._needed: dict[str, int] | None = None
        self.timeline: dict[str, float] = {}

    def prepare_socket(self) -> None:
        """Create the directory the destination QEMU binds its socket in
        (0700, owned by the QEMU user: nobody else can reach the socket).

        :raises LocalSocketError: unknown QEMU user, or cannot create it.
        """
        uid, gid = local_socket.resolve_owner(self.conf.qemu_user,
                                              self.conf.qemu_group)
        self._allowed = {0, uid}
        self._make_socket_dir(uid, gid)

    def attach_peer(self, conn: protocol.FramedConnection) -> None:
        """Hand over the authenticated connection from the source agent."""
        self._transition(SessionState.CONNECTING, {SessionState.PREPARED})
        self._conn = conn
        self._track(conn.sock)
        self._spawn("dst", self._run, conn)

    def _connect_qemu(self) -> socket.socket:
        deadline = time.monotonic() + self.conf.connect_timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._track(sock)
            try:
                sock.connect(self.socket_path)
                break
            except OSError as err:
                sock.close()
                if time.monotonic() > deadline:
                    raise exception.SessionFailed(
                        migration_id=self.migration_id,
                        reason="destination QEMU not reachable at %s: %s"
                        % (self.socket_path, err)) from err
                time.sleep(0.1)
        # Only QEMU (or root) can bind in the directory; check anyway.
        local_socket.check_peer(sock, self._allowed, self.migration_id,
                                self.socket_path)
        return sock

    def _run(self, conn: protocol.FramedConnection) -> None:
        try:
            qsock = self._connect_qemu()
        except exception.SessionFailed as err:
            try:
                conn.send(FrameType.ABORT, str(err).encode()[:1024])
            except exception.AgentError:
                pass
            raise
        tune_socket(qsock, self.conf.socket_buffer)
        self.store.begin_attempt()
        self._hold_qemu_ram(qsock)
        skip = bool(self.holders) and not self._store_has_pages() and \
            not self._holders_worth_contacting()
        if not skip and (self.holders or self._store_has_pages()):
            return self._run_merge(conn, qsock)
        self._transition(SessionState.STREAMING, {SessionState.CONNECTING})
        if skip:
            self._skip_holders()
        conn.send(FrameType.READY)
        self._spawn("dst-ret", self._return_loop, conn, qsock)
        try:
            self._forward_loop(conn, qsock)
        except exception.PeerClosed as err:
            raise exception.SessionFailed(
                migration_id=self.migration_id,
                reason="source agent connection lost: %s" % err) from err

    def _hold_qemu_ram(self, qsock: socket.socket) -> None:
        """Keep the RAM of the QEMU we feed open, so that the pages we
        forward need no copy here (module :mod:`.ram_backing`)."""
        if not self.conf.hold_qemu_ram:
            self.counters["ram_backing"] = 0
            return
        try:
            ram = ram_backing.attach(qsock)
        except exception.BackingUnavailable as err:
            self.counters["ram_backing"] = 0
            self.backing_error = str(err)
            LOG.warning("migration %(mid)s attempt %(att)d: %(err)s. This "
                        "agent keeps its own copy of the pages it forwards "
                        "instead (up to [dcmigrate_agent] "
                        "copy_store_max_mib in all)",
                        {"mid": self.migration_id, "att": self.attempt,
                         "err": err})
            return
        if not self.store.attach(ram):
            ram.close()
            self.counters["ram_backing"] = 0
            return
        self.counters["ram_backing"] = 1
        LOG.info("migration %(mid)s attempt %(att)d: holding the guest RAM "
                 "of QEMU pid %(pid)d (%(files)s); pages are not copied",
                 {"mid": self.migration_id, "att": self.attempt,
                  "pid": ram.pid, "files": ", ".join(
                      "%s %d MiB" % (f.label, f.size >> 20)
                      for f in ram.files)})

    def _complete(self) -> None:
        super()._complete()
        if self.state == SessionState.COMPLETED:
            # The guest runs on that RAM now: nothing will be relayed
            # from it, and holding it would pin it after the guest ends.
            self.store.drop_backings()

    def _forward_loop(self, conn: protocol.FramedConnection,
                      qsock: socket.socket) -> None:
        reader = StreamReader(StoreVisitor(self.store))
        c = self.counters
        ack_every = self.conf.ack_interval
        next_ack = time.monotonic() + ack_every
        while True:
            try:
                ftype, payload = conn.recv(into=reader.get_buffer)
            except exception.PeerClosed as err:
                raise exception.SessionFailed(
                    migration_id=self.migration_id,
                    reason="source agent connection lost: %s" % err) from err
            if ftype == FrameType.DATA:
                n = len(payload)
                reader.buffer_updated(n)
                try:
                    qsock.sendall(payload)
                except OSError as err:
                    raise exception.SessionFailed(
                        migration_id=self.migration_id,
                        reason="destination QEMU closed the stream: %s" % err
                    ) from err
                c["stream_bytes"] += n
                # The measured source rate (status): the controller's
                # hint for the next attempt, also without holders.
                self.src_meter.add(n)
                now = time.monotonic()
                if now >= next_ack:
                    next_ack = now + ack_every
                    self._ack(conn, reader)
            elif ftype == FrameType.DATA_EOF:
                self._data_eof(conn, reader, qsock)
                return
            else:
                self._unexpected_source_frame(conn, ftype, payload)

    def _data_eof(self, conn: protocol.FramedConnection,
                  reader: StreamReader, qsock: socket.socket) -> None:
        """The source's stream ended cleanly: ack, close QEMU's input and
        complete once the return path has ended too."""
        reader.close()
        self._final_ack(conn, reader)
        try:
            qsock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        with self._lock:
            self._stream_done = True
            finished = self._return_done
        if finished:
            self._complete()

    def _unexpected_source_frame(self, conn: protocol.FramedConnection,
                                 ftype: FrameType, payload: Any) -> NoReturn:
        """Fail the session for an ABORT or a frame out of place."""
        if ftype == FrameType.ABORT:
            raise exception.PeerAborted(
                migration_id=self.migration_id,
                reason="source aborted: %s"
                % bytes(payload).decode(errors="replace"))
        raise exception.PeerProtocolError(
            peer=conn.peer, reason="unexpected %s frame from the "
            "source" % ftype.name)

    def _final_ack(self, conn: protocol.FramedConnection,
                   reader: StreamReader) -> None:
        """Acknowledge the whole stream, best effort: once the source has
        our return EOF it may close as soon as it sent DATA_EOF, and a
        migration that completed must not be marked failed for that."""
        try:
            self._ack(conn, reader)
        except exception.AgentError:
            sync_counters(self, reader)
            self.counters["acked_offset"] = reader.offset

    def _ack(self, conn: protocol.FramedConnection,
             reader: StreamReader) -> None:
        sync_counters(self, reader)
        sc = self.store.counters()
        self.counters["acked_offset"] = reader.offset
        conn.send(FrameType.ACK, protocol.ACK.pack(reader.offset, sc.pages,
                                                   sc.zero_pages))

    def _return_loop(self, conn: protocol.FramedConnection,
                     qsock: socket.socket) -> None:
        buf = bytearray(64 * 1024)
        view = memoryview(buf)
        c = self.counters
        gate = return_gate.SwitchoverAckGate(self._wait_relays_for_ack) \
            if self.pullers else None

        def send(data: bytes | memoryview) -> None:
            conn.send(FrameType.RETURN, data)

        while True:
            try:
                n = qsock.recv_into(buf)
            except OSError:
                if self.state in FINAL_STATES:
                    return
                n = 0
            if n == 0:
                conn.send(FrameType.RETURN_EOF)
                with self._lock:
                    self._return_done = True
                    finished = self._stream_done
                if finished:
                    self._complete()
                return
            if gate is None:
                send(view[:n])
            elif not gate.feed(view[:n], send):
                return
            elif gate.held_s is not None and \
                    "switchover_ack_held_ms" not in c:
                c["switchover_ack_held_ms"] = int(gate.held_s * 1000)
            c["return_bytes"] += n

    def status(self) -> dict[str, Any]:
        st = super().status()
        sc = self.store.counters()
        st["store"] = {"pages": sc.pages, "zero_pages": sc.zero_pages,
                       "bytes_held": sc.bytes_held}
        if self.backing_error:
            st["ram_backing_error"] = self.backing_error
        if self.holders or self.feed is not None:
            feed = self.feed
            st["redirect"] = {
                "relay_done": self.relay_done.is_set(),
                "holders_skipped": self.holders_skipped,
                "frontier": self.frontier,
                "first_frontier": self.first_frontier,
                "pages_superseded": (self.planner.superseded_pages
                                     if self.planner else 0),
                "unheld_page_cost": (round(self.planner.unheld_page_cost)
                                     if self.planner else None),
                "timeline": dict(self.timeline),
                # Bytes/s arriving from the source and from all holders
                # (sliding 1 s window); a controller sets QEMU's
                # avail-switchover-bandwidth from the former.
                "final_extra_pages": self.final_extra_pages,
                "source_rate": self.src_meter.rate(),
                "relay_rate": self.relay_meter.rate(),
                "source_position": self.src_position,
                "source_pass1_done": self.src_pass1_done,
                "local_pages_injected":
                    feed.local_pages_injected if feed else 0,
                "relay_pages_injected":
                    feed.relay_pages_injected if feed else 0,
                "relay_pages_dropped":
                    feed.relay_pages_dropped if feed else 0,
                "zero_records_elided":
                    feed.zero_records_elided if feed else 0,
                "needed": self.needed_pages(),
                "holders": {p.host: {"pages": p.pages, "bytes": p.bytes,
                                     "lowest": p.lowest,
                                     "injected": p.injected,
                                     "dropped": p.dropped,
                                     "done": p.done.is_set(),
                                     "failed": p.failed}
                            for p in self.pullers},
            }
        return st
