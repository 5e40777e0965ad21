"""One migration attempt as seen by one agent: the data pumps.

A *source* session accepts the local migration connection (from QEMU, or
from libvirtd on QEMU's behalf), connects to the destination host's agent,
and pumps the stream forward while relaying the return path back.  A
*destination* session takes the authenticated peer connection, connects to
the local destination QEMU, parses the stream into the migration's page
store and feeds QEMU.

Backpressure: every hop is a blocking send of at most one chunk, and socket
buffers are small, so the source QEMU can only write as fast as the slowest
link drains (see the QEMU stream reference, section 5: an agent that reads
faster than the network makes QEMU switch over too early).

Failure rule: any error closes every socket of the attempt.  The source
QEMU then sees its migration fail and keeps running the guest; the
destination QEMU sees a broken stream.  Nothing here can make both run.
"""

from __future__ import annotations

import enum
import socket
import threading
import time
from typing import Any

from oslo_log import log as logging
import xxhash

from nova_dcmigrate.agent import exception
from nova_dcmigrate.agent.page_store import DIGEST_LEN
from nova_dcmigrate.agent.page_store import PageStore
from nova_dcmigrate.agent.page_store import zero_digest
from nova_dcmigrate.agent import protocol
from nova_dcmigrate.agent.protocol import FrameType
from nova_dcmigrate.exception import MigrationStateError
from nova_dcmigrate.stream import RamBlock
from nova_dcmigrate.stream import RamStart
from nova_dcmigrate.stream import ReaderState
from nova_dcmigrate.stream import StreamError
from nova_dcmigrate.stream import StreamReader
from nova_dcmigrate.stream import StreamVisitor

LOG = logging.getLogger(__name__)


class SessionState(enum.Enum):
    PREPARED = "prepared"        # waiting for its connections
    CONNECTING = "connecting"    # one side connected, reaching the other
    STREAMING = "streaming"      # the stream flows
    COMPLETED = "completed"      # stream complete, both QEMU sides closed
    FAILED = "failed"            # error; sockets closed
    ABORTED = "aborted"          # aborted on request; sockets closed


FINAL_STATES = frozenset({SessionState.COMPLETED, SessionState.FAILED,
                          SessionState.ABORTED})


class Role(enum.Enum):
    SOURCE = "source"
    DESTINATION = "destination"


def _tune(sock: socket.socket, bufsize: int) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if bufsize:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, bufsize)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, bufsize)


class MigrationSession:
    """State, counters and teardown shared by both roles."""

    role: Role

    def __init__(self, conf: Any, migration_id: str, secret: str,
                 attempt: int) -> None:
        self.conf = conf
        self.migration_id = migration_id
        self.attempt = attempt
        self.secret = secret.encode()
        self.state = SessionState.PREPARED
        self.error: str | None = None
        self.created_at = time.monotonic()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._conn: protocol.FramedConnection | None = None
        self.done = threading.Event()
        self.counters: dict[str, int] = {
            "stream_bytes": 0,        # migration stream bytes carried
            "return_bytes": 0,        # return-path bytes carried
            "pages": 0,               # PAGE records seen
            "zero_pages": 0,          # ZERO records seen
            "sections": 0,
            "acked_offset": 0,        # stream offset stored at destination
        }

    # -- state -----------------------------------------------------------
    def _transition(self, new: SessionState,
                    allowed: frozenset[SessionState] | set[SessionState]
                    ) -> None:
        with self._lock:
            if self.state not in allowed:
                raise MigrationStateError(
                    migration_id=self.migration_id, state=self.state.value,
                    operation="entering %s" % new.value,
                    required="/".join(sorted(s.value for s in allowed)))
            self._set(new)

    def _set(self, new: SessionState) -> None:
        LOG.debug("migration %(mid)s attempt %(att)d %(role)s: %(old)s -> "
                  "%(new)s", {"mid": self.migration_id, "att": self.attempt,
                              "role": self.role.value,
                              "old": self.state.value, "new": new.value})
        self.state = new
        if new == SessionState.STREAMING:
            self.started_at = time.monotonic()
        if new in FINAL_STATES:
            self.finished_at = time.monotonic()
            self.done.set()

    def fail(self, reason: str) -> None:
        """Enter FAILED (unless already final) and close every socket."""
        with self._lock:
            if self.state in FINAL_STATES:
                return
            self.error = reason
            self._set(SessionState.FAILED)
        LOG.error("migration %(mid)s attempt %(att)d %(role)s failed: "
                  "%(reason)s", {"mid": self.migration_id,
                                 "att": self.attempt,
                                 "role": self.role.value, "reason": reason})
        self._close_all()

    def abort(self, reason: str = "aborted by request") -> None:
        with self._lock:
            if self.state in FINAL_STATES:
                return
            self.error = reason
            self._set(SessionState.ABORTED)
        LOG.info("migration %(mid)s attempt %(att)d %(role)s aborted: "
                 "%(reason)s", {"mid": self.migration_id, "att": self.attempt,
                                "role": self.role.value, "reason": reason})
        conn = self._conn
        if conn is not None:
            try:
                conn.send(FrameType.ABORT, reason.encode()[:1024])
            except exception.AgentError:
                pass
        self._close_all()

    def _complete(self) -> None:
        with self._lock:
            if self.state != SessionState.STREAMING:
                return
            self._set(SessionState.COMPLETED)
        LOG.info("migration %(mid)s attempt %(att)d %(role)s completed: "
                 "%(bytes)d stream bytes in %(secs).2f s",
                 {"mid": self.migration_id, "att": self.attempt,
                  "role": self.role.value,
                  "bytes": self.counters["stream_bytes"],
                  "secs": (self.finished_at or 0) - (self.started_at or 0)})
        self._close_all()

    def _track(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            closed = self.state in FINAL_STATES
            self._sockets.append(sock)
        if closed:
            sock.close()
            raise exception.SessionFailed(migration_id=self.migration_id,
                                          reason="session already ended")
        return sock

    def _close_all(self) -> None:
        with self._lock:
            socks, self._sockets = self._sockets, []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass

    def close(self) -> None:
        self.abort("session removed")
        self._close_all()

    def _run_guarded(self, func: Any, *args: Any) -> None:
        try:
            func(*args)
        except StreamError as err:
            self.fail("invalid migration stream: %s" % err)
        except exception.AgentError as err:
            self.fail(str(err))
        except OSError as err:
            self.fail("socket error: %s" % err)
        except Exception as err:  # noqa: BLE001 - a thread must not die silently
            LOG.exception("migration %s: unexpected error", self.migration_id)
            self.fail("internal error: %r" % err)

    def _spawn(self, name: str, func: Any, *args: Any) -> threading.Thread:
        t = threading.Thread(target=self._run_guarded, args=(func, *args),
                             name="%s-%s-%s" % (name, self.migration_id[:8],
                                                self.attempt), daemon=True)
        t.start()
        return t

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        end = self.finished_at or now
        return {
            "migration_id": self.migration_id,
            "attempt": self.attempt,
            "role": self.role.value,
            "state": self.state.value,
            "error": self.error,
            "elapsed": (end - self.started_at) if self.started_at else 0.0,
            "counters": dict(self.counters),
        }


class _SourceTracker(StreamVisitor):
    """Counts records and remembers the digest of every page sent."""

    def __init__(self, session: SourceSession, seed: int) -> None:
        self.s = session
        self.seed = seed
        self.zero = zero_digest(seed)
        self.digests: list[bytearray] = []

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


class _StoreVisitor(StreamVisitor):
    """Destination: keeps every received page in the page store."""

    def __init__(self, store: PageStore) -> None:
        self.store = store

    def on_ram_start(self, start: RamStart) -> None:
        self.store.configure(start)

    def on_page(self, block: RamBlock, page: int, data: memoryview) -> None:
        self.store.put_page(block, page, data)

    def on_zero(self, block: RamBlock, page: int) -> None:
        self.store.put_zero(block, page)


def digest_seed(secret: bytes) -> int:
    """Per-migration digest seed, derived so both agents agree on it."""
    import hashlib
    import hmac
    return int.from_bytes(
        hmac.new(secret, b"dcmigrate-digest-seed", hashlib.sha256
                 ).digest()[:8], "big")


def _sync_counters(session: MigrationSession, reader: StreamReader) -> None:
    c = session.counters
    c["pages"] = reader.pages
    c["zero_pages"] = reader.zero_pages
    c["sections"] = reader.sections


class SourceSession(MigrationSession):
    """Local QEMU -> this agent -> destination agent."""

    role = Role.SOURCE

    def __init__(self, conf: Any, migration_id: str, secret: str,
                 attempt: int, listen_port: int, dest_address: str,
                 dest_port: int) -> None:
        super().__init__(conf, migration_id, secret, attempt)
        self.listen_port = listen_port
        self.dest_address = dest_address
        self.dest_port = dest_port
        self._listener: socket.socket | None = None
        self.tracker = _SourceTracker(self, digest_seed(self.secret))
        self._return_eof = threading.Event()
        self._stream_done = False

    def start(self) -> None:
        """Bind the local listening socket; raises OSError if taken."""
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind((self.conf.local_address, self.listen_port))
        lsock.listen(1)
        lsock.settimeout(self.conf.session_timeout)
        self._listener = self._track(lsock)
        self._spawn("src", self._run)

    def _run(self) -> None:
        assert self._listener is not None
        try:
            qsock, addr = self._listener.accept()
        except socket.timeout:
            raise exception.SessionFailed(
                migration_id=self.migration_id,
                reason="no migration connection within %.0f s"
                % self.conf.session_timeout) from None
        finally:
            # One connection per attempt; nobody else may connect.
            self._listener.close()
        self._track(qsock)
        qsock.settimeout(None)
        _tune(qsock, self.conf.socket_buffer)
        LOG.info("migration %(mid)s attempt %(att)d: local migration "
                 "connection from %(addr)s", {"mid": self.migration_id,
                                               "att": self.attempt,
                                               "addr": addr})
        self._transition(SessionState.CONNECTING, {SessionState.PREPARED})
        conn = self._connect_peer()
        self._conn = conn
        ftype, payload = conn.recv()
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

    def _connect_peer(self) -> protocol.FramedConnection:
        peer = "%s:%d" % (self.dest_address, self.dest_port)
        deadline = time.monotonic() + self.conf.connect_timeout
        while True:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._track(sock)
            sock.settimeout(self.conf.handshake_timeout)
            try:
                sock.connect((self.dest_address, self.dest_port))
                break
            except OSError as err:
                sock.close()
                if time.monotonic() > deadline:
                    raise exception.PeerConnectError(
                        peer=peer, reason=str(err)) from err
                time.sleep(0.2)
        _tune(sock, self.conf.socket_buffer)
        conn = protocol.connect(sock, peer, self.secret,
                                protocol.Channel.STREAM, self.migration_id,
                                self.attempt)
        sock.settimeout(None)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        return conn

    def _forward_loop(self, conn: protocol.FramedConnection,
                      qsock: socket.socket) -> None:
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
                _sync_counters(self, reader)
        _sync_counters(self, reader)
        if reader.state != ReaderState.TAIL:
            # The source QEMU closed mid-stream: migration cancelled.
            raise exception.SessionFailed(
                migration_id=self.migration_id,
                reason="source closed the stream before completion "
                       "(migration cancelled or failed on the source)")
        conn.send(FrameType.DATA_EOF)
        self._stream_done = True
        # Completion needs the destination's return EOF too.
        self._return_eof.wait()
        self._complete()

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
                raise exception.SessionFailed(
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


class DestinationSession(MigrationSession):
    """Destination agent -> local QEMU, keeping every page in the store."""

    role = Role.DESTINATION

    def __init__(self, conf: Any, migration_id: str, secret: str,
                 attempt: int, qemu_port: int, store: PageStore) -> None:
        super().__init__(conf, migration_id, secret, attempt)
        self.qemu_port = qemu_port
        self.store = store
        self._stream_done = False
        self._return_done = False

    def attach_peer(self, conn: protocol.FramedConnection) -> None:
        """Hand over the authenticated connection from the source agent."""
        self._transition(SessionState.CONNECTING, {SessionState.PREPARED})
        self._conn = conn
        self._track(conn.sock)
        self._spawn("dst", self._run, conn)

    def _connect_qemu(self) -> socket.socket:
        deadline = time.monotonic() + self.conf.connect_timeout
        addr = (self.conf.local_address, self.qemu_port)
        while True:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._track(sock)
            try:
                sock.connect(addr)
                return sock
            except OSError as err:
                sock.close()
                if time.monotonic() > deadline:
                    raise exception.SessionFailed(
                        migration_id=self.migration_id,
                        reason="destination QEMU not reachable at %s:%d: %s"
                        % (addr[0], addr[1], err)) from err
                time.sleep(0.1)

    def _run(self, conn: protocol.FramedConnection) -> None:
        try:
            qsock = self._connect_qemu()
        except exception.SessionFailed as err:
            try:
                conn.send(FrameType.ABORT, str(err).encode()[:1024])
            except exception.AgentError:
                pass
            raise
        _tune(qsock, self.conf.socket_buffer)
        self._transition(SessionState.STREAMING, {SessionState.CONNECTING})
        conn.send(FrameType.READY)
        self._spawn("dst-ret", self._return_loop, conn, qsock)
        try:
            self._forward_loop(conn, qsock)
        except exception.PeerClosed as err:
            raise exception.SessionFailed(
                migration_id=self.migration_id,
                reason="source agent connection lost: %s" % err) from err

    def _forward_loop(self, conn: protocol.FramedConnection,
                      qsock: socket.socket) -> None:
        reader = StreamReader(_StoreVisitor(self.store))
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
                now = time.monotonic()
                if now >= next_ack:
                    next_ack = now + ack_every
                    self._ack(conn, reader)
            elif ftype == FrameType.DATA_EOF:
                reader.close()
                self._ack(conn, reader)
                try:
                    qsock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                with self._lock:
                    self._stream_done = True
                    finished = self._return_done
                if finished:
                    self._complete()
                return
            elif ftype == FrameType.ABORT:
                raise exception.SessionFailed(
                    migration_id=self.migration_id,
                    reason="source aborted: %s"
                    % bytes(payload).decode(errors="replace"))
            else:
                raise exception.PeerProtocolError(
                    peer=conn.peer, reason="unexpected %s frame from the "
                    "source" % ftype.name)

    def _ack(self, conn: protocol.FramedConnection,
             reader: StreamReader) -> None:
        _sync_counters(self, reader)
        sc = self.store.counters()
        self.counters["acked_offset"] = reader.offset
        conn.send(FrameType.ACK, protocol.ACK.pack(reader.offset, sc.pages,
                                                   sc.zero_pages))

    def _return_loop(self, conn: protocol.FramedConnection,
                     qsock: socket.socket) -> None:
        buf = bytearray(64 * 1024)
        view = memoryview(buf)
        c = self.counters
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
            conn.send(FrameType.RETURN, view[:n])
            c["return_bytes"] += n

    def status(self) -> dict[str, Any]:
        st = super().status()
        sc = self.store.counters()
        st["store"] = {"pages": sc.pages, "zero_pages": sc.zero_pages,
                       "bytes_held": sc.bytes_held}
        return st
