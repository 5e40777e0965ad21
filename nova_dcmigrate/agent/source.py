"""Source side of an attempt: local QEMU -> this agent -> destination.

The source session accepts the local migration connection (from libvirtd
on QEMU's behalf, or QEMU) on a UNIX socket in a root-only directory
(:mod:`.local_socket`), connects to the destination host's agent, and
pumps the stream forward while relaying the return path back.  On a
redirected attempt the stream goes through :mod:`.source_filter`.
"""

from __future__ import annotations

import collections
import os
import select
import socket
import sys
import threading
import time
from typing import Any

from oslo_log import log as logging
import xxhash

from nova_dcmigrate.agent import exception
from nova_dcmigrate.agent.frontier import SourceFrontier
from nova_dcmigrate.agent.layout import Layout
from nova_dcmigrate.agent import local_socket
from nova_dcmigrate.agent.page_store import DIGEST_LEN
from nova_dcmigrate.agent.page_store import zero_digest
from nova_dcmigrate.agent import protocol
from nova_dcmigrate.agent.protocol import FrameType
from nova_dcmigrate.agent import relay_wire as wire
from nova_dcmigrate.agent.session import digest_seed
from nova_dcmigrate.agent.session import FINAL_STATES
from nova_dcmigrate.agent.session import Role
from nova_dcmigrate.agent.session import SessionState
from nova_dcmigrate.agent.session import sync_counters
from nova_dcmigrate.agent.session import tune_socket
from nova_dcmigrate.agent.source_filter import SourceFilter
from nova_dcmigrate.agent.tls import PeerTLS
from nova_dcmigrate.stream import RamBlock
from nova_dcmigrate.stream import RamStart
from nova_dcmigrate.stream import ReaderState
from nova_dcmigrate.stream import StreamReader
from nova_dcmigrate.stream import StreamVisitor
from nova_dcmigrate.stream import fastpath

LOG = logging.getLogger(__name__)


class SourceTracker(StreamVisitor):
    """Counts records and remembers the digest of every page sent."""

    def __init__(self, session: SourceSession, seed: int) -> None:
        self.s = session
        self.seed = seed
        self.zero = zero_digest(seed)
        self.digests: list[bytearray] = []
        self._native: Any = fastpath.native
        if self._native is not None:
            self.fast_records = self._fast_records

    def _fast_records(self, buf: bytearray, pos: int, end: int,
                      block: RamBlock) -> tuple[int, int, int]:
        result: tuple[int, int, int] = self._native.digest_records(
            buf, pos, end, block.used_length, self.digests[block.index],
            self.seed, self.zero)
        return result

    def on_ram_start(self, start: RamStart) -> None:
        self.digests = [bytearray(b.npages * DIGEST_LEN)
                        for b in start.blocks]

    def on_page(self, block: RamBlock, page: int, data: memoryview) -> None:
        di = page * DIGEST_LEN
        self.digests[block.index][di:di + DIGEST_LEN] = \
            xxhash.xxh3_128_digest(data, self.seed)

    def on_zero(self, block: RamBlock, page: int) -> None:
        di = page * DIGEST_LEN
        self.digests[block.index][di:di + DIGEST_LEN] = self.zero


class SourceSession(SourceFrontier):
    """Local QEMU -> this agent -> destination agent."""

    role = Role.SOURCE

    def __init__(self, conf: Any, migration_id: str, secret: str,
                 attempt: int, dest_address: str, dest_port: int,
                 tls: PeerTLS | None = None) -> None:
        super().__init__(conf, migration_id, secret, attempt, tls)
        self.dest_address = dest_address
        self.dest_port = dest_port
        self._listener: socket.socket | None = None
        self.tracker = SourceTracker(self, digest_seed(self.secret))
        self._return_eof = threading.Event()
        self._stream_done = False
        # Redirect plan from the destination (None: plain migration).
        self.layout: Layout | None = None
        self.flags: list[bytearray] = []
        self.expected: list[bytearray] = []
        self.frontier = 0
        # Lowest held page skipped in the first pass and not kept: the
        # frontier may be raised up to here, never above (the holders stop
        # there).
        self.lowest_skip = sys.maxsize
        # Held pages skipped in the first pass, kept so that a raise can
        # give them back to the source: global page -> (block, page, data).
        self.assist: dict[int, tuple[RamBlock, int, bytes]] = {}
        self.assist_budget = conf.assist_buffer_mib * 256
        # Frontier confirmations (with the kept pages a raise gives back)
        # for the forward loop: the pages must precede the confirmation in
        # the stream.
        self._outbox: collections.deque[
            tuple[int, int, list[tuple[RamBlock, int, bytes]]]] = \
            collections.deque()
        self._frontier_lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self._track(self._wake_r)
        self._track(self._wake_w)
        self.filter: SourceFilter | None = None

    def start(self) -> None:
        """Listen on the attempt's UNIX socket (root-only directory).

        :raises LocalSocketError, OSError: cannot create or bind it.
        """
        self._allowed = self._local_uids()
        self._make_socket_dir(0, 0)
        lsock = self._track(local_socket.listen(self.socket_path))
        lsock.settimeout(self.conf.session_timeout)
        self._listener = lsock
        self._spawn("src", self._run)

    def _run(self) -> None:
        assert self._listener is not None
        try:
            qsock, _addr = self._listener.accept()
        except socket.timeout:
            raise exception.SessionFailed(
                migration_id=self.migration_id,
                reason="no migration connection within %.0f s"
                % self.conf.session_timeout) from None
        finally:
            # One connection per attempt; nobody else may connect.
            self._listener.close()
            try:
                os.unlink(self.socket_path)
            except OSError:
                pass
        self._track(qsock)
        local_socket.check_peer(qsock, self._allowed, self.migration_id,
                                self.socket_path)
        qsock.settimeout(None)
        tune_socket(qsock, self.conf.socket_buffer)
        LOG.info("migration %(mid)s attempt %(att)d: local migration "
                 "connection on %(path)s (uid %(uid)d)",
                 {"mid": self.migration_id, "att": self.attempt,
                  "path": self.socket_path,
                  "uid": local_socket.peer_uid(qsock)})
        self._transition(SessionState.CONNECTING, {SessionState.PREPARED})
        conn = self._connect_peer()
        self._conn = conn
        ftype, payload = conn.recv()
        if ftype == FrameType.LAYOUT:
            ftype, payload = self._receive_plan(conn, payload)
        if ftype == FrameType.ABORT:
            raise exception.SessionFailed(
                migration_id=self.migration_id,
                reason="destination agent refused: %s"
                % bytes(payload).decode(errors="replace"))
        if ftype != FrameType.READY:
            raise exception.PeerProtocolError(
                peer=conn.peer, reason="expected READY, got %s" % ftype.name)
        self._transition(SessionState.STREAMING, {SessionState.CONNECTING})
        self._spawn("src-ret", self._return_loop, conn, qsock)
        try:
            self._forward_loop(conn, qsock)
        except exception.PeerClosed as err:
            raise exception.SessionFailed(
                migration_id=self.migration_id,
                reason="destination agent connection lost: %s" % err
            ) from err

    def _receive_plan(self, conn: protocol.FramedConnection,
                      layout_raw: memoryview
                      ) -> tuple[FrameType, memoryview]:
        """Read LAYOUT, EXPECTED*, FRONTIER: who holds what for the
        destination; returns the frame that follows (READY or ABORT)."""
        layout = Layout.from_json(layout_raw, conn.peer)
        self.layout = layout
        self.flags = [bytearray(n) for n in layout.npages]
        self.expected = [bytearray(n * DIGEST_LEN) for n in layout.npages]
        while True:
            ftype, payload = conn.recv()
            if ftype == FrameType.EXPECTED:
                idx, first, fl, dg = wire.decode_expected(payload, layout,
                                                          conn.peer)
                self.flags[idx][first:first + len(fl)] = fl
                self.expected[idx][first * DIGEST_LEN:
                                   (first + len(fl)) * DIGEST_LEN] = dg
            elif ftype == FrameType.FRONTIER:
                self.frontier = wire.U64.unpack(payload)[0]
            else:
                return ftype, payload

    def _connect_peer(self) -> protocol.FramedConnection:
        peer = "%s:%d" % (self.dest_address, self.dest_port)
        deadline = time.monotonic() + self.conf.connect_timeout
        while True:
            try:
                sock = self._connect_tcp(self.dest_address, self.dest_port,
                                         self.conf.handshake_timeout)
                break
            except exception.PeerAuthError:
                raise
            except OSError as err:
                if time.monotonic() > deadline:
                    raise exception.PeerConnectError(
                        peer=peer, reason=str(err)) from err
                time.sleep(0.2)
        conn = protocol.connect(sock, peer, self.secret,
                                protocol.Channel.STREAM, self.migration_id,
                                self.attempt)
        sock.settimeout(None)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        return conn

    def _forward_loop(self, conn: protocol.FramedConnection,
                      qsock: socket.socket) -> None:
        if self.layout is not None:
            return self._filter_loop(conn, qsock)
        reader = StreamReader(self.tracker)
        chunk = self.conf.chunk_size
        c = self.counters
        while True:
            buf = reader.get_buffer(chunk)
            n = qsock.recv_into(buf, chunk)
            if n == 0:
                break
            # Validate before forwarding: a stream we cannot carry must not
            # reach the destination QEMU.
            reader.buffer_updated(n)
            conn.send(FrameType.DATA, buf[:n])
            c["stream_bytes"] += n
            if c["pages"] + 1024 < reader.pages:
                sync_counters(self, reader)
        self._end_of_stream(conn, reader)

    def _end_of_stream(self, conn: protocol.FramedConnection,
                       reader: StreamReader) -> None:
        """The source QEMU closed its side: complete, or fail if the
        stream stopped before its end (the migration was cancelled)."""
        sync_counters(self, reader)
        if reader.state != ReaderState.TAIL:
            raise exception.SessionFailed(
                migration_id=self.migration_id,
                reason="source closed the stream before completion "
                       "(migration cancelled or failed on the source)")
        conn.send(FrameType.DATA_EOF)
        self._stream_done = True
        # Completion needs the destination's return EOF too.
        self._return_eof.wait()
        self._complete()

    def _filter_loop(self, conn: protocol.FramedConnection,
                     qsock: socket.socket) -> None:
        """Forward loop of a redirected attempt: re-encode without the
        pages the destination will get elsewhere."""
        assert self.layout is not None
        f = SourceFilter(self, self.layout, self.flags, self.expected,
                         digest_seed(self.secret))
        self.filter = f
        reader = StreamReader(f)
        chunk = self.conf.chunk_size
        c = self.counters
        last_progress = 0.0
        sent_done = False
        wake = self._wake_r
        while True:
            try:
                ready = select.select([qsock, wake], [], [])[0]
            except ValueError as err:
                # An abort closed the sockets between two reads.
                raise exception.SessionFailed(
                    migration_id=self.migration_id,
                    reason="migration connection closed: %s" % err
                ) from err
            if wake in ready:
                # A frontier move: confirm it between reads from QEMU.
                wake.recv(4096)
                self._drain_outbox(conn, f)
                if qsock not in ready:
                    continue
            buf = reader.get_buffer(chunk)
            n = qsock.recv_into(buf, chunk)
            if n == 0:
                break
            reader.buffer_updated(n)
            c["stream_bytes"] += n
            out = f.w.take()
            if out:
                conn.send(FrameType.DATA, out)
                c["bytes_sent"] = c.get("bytes_sent", 0) + len(out)
            now = time.monotonic()
            if (f.pass1_done and not sent_done) or \
                    now - last_progress > 0.02:
                last_progress = now
                sent_done = f.pass1_done
                conn.send(FrameType.PROGRESS, wire.PROGRESS.pack(
                    f.position, f.ncovered, int(f.pass1_done)))
            c["pages_dropped"] = f.dropped
            c["bytes_dropped"] = f.dropped_bytes
            c["held_pages_forwarded"] = f.forwarded_held
            if c["pages"] + 1024 < reader.pages:
                sync_counters(self, reader)
        self._end_of_stream(conn, reader)

    def _return_loop(self, conn: protocol.FramedConnection,
                     qsock: socket.socket) -> None:
        c = self.counters
        while True:
            try:
                ftype, payload = conn.recv()
            except exception.PeerClosed as err:
                if self.state in FINAL_STATES:
                    return
                if self._return_eof.is_set():
                    # The destination finished its side and may close as
                    # soon as it has our DATA_EOF; whether the stream got
                    # there is the forward loop's call (its send fails if
                    # not).
                    return
                raise exception.SessionFailed(
                    migration_id=self.migration_id,
                    reason="destination agent connection lost: %s" % err
                ) from err
            if ftype == FrameType.RETURN:
                qsock.sendall(payload)
                c["return_bytes"] += len(payload)
            elif ftype == FrameType.ACK:
                off, _pages, _zero = protocol.ACK.unpack(payload)
                c["acked_offset"] = off
            elif ftype == FrameType.FRONTIER:
                self._move_frontier(conn, wire.U64.unpack(payload)[0])
            elif ftype == FrameType.RETURN_EOF:
                try:
                    qsock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                self._return_eof.set()
                if self._stream_done:
                    self._complete()
                    return
            elif ftype == FrameType.ABORT:
                raise exception.PeerAborted(
                    migration_id=self.migration_id,
                    reason="destination aborted: %s"
                    % bytes(payload).decode(errors="replace"))
            else:
                raise exception.PeerProtocolError(
                    peer=conn.peer, reason="unexpected %s frame from the "
                    "destination" % ftype.name)

    def _close_all(self) -> None:
        self._return_eof.set()
        super()._close_all()

    def digest_table(self) -> list[bytearray]:
        return self.tracker.digests
