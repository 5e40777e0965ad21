"""One migration attempt as seen by one agent: the data pumps.

A *source* session accepts the local migration connection (from libvirtd
on QEMU's behalf, or QEMU) on a UNIX socket in a root-only directory
(:mod:`.local_socket`), connects to the destination host's agent,
and pumps the stream forward while relaying the return path back.  A
*destination* session takes the authenticated peer connection, connects to
the local destination QEMU's UNIX socket, parses the stream into the
migration's page store and feeds QEMU.

Backpressure: every hop is a blocking send of at most one chunk, and socket
buffers are small, so the source QEMU can only write as fast as the slowest
link drains (see the QEMU stream reference, section 5: an agent that reads
faster than the network makes QEMU switch over too early).

Failure rule: any error closes every socket of the attempt.  The source
QEMU then sees its migration fail and keeps running the guest; the
destination QEMU sees a broken stream.  Nothing here can make both run.
"""

from __future__ import annotations

import collections
import enum
import os
import select
import socket
import sys
import threading
import time
from typing import Any
from typing import NoReturn

from oslo_log import log as logging
import xxhash

from nova_dcmigrate.agent import exception
from nova_dcmigrate.agent.layout import Layout
from nova_dcmigrate.agent import local_socket
from nova_dcmigrate.agent import merge
from nova_dcmigrate.agent import page_store
from nova_dcmigrate.agent.page_store import DIGEST_LEN
from nova_dcmigrate.agent.page_store import PageStore
from nova_dcmigrate.agent.page_store import zero_digest
from nova_dcmigrate.agent import plan as planmod
from nova_dcmigrate.agent import protocol
from nova_dcmigrate.agent.protocol import FrameType
from nova_dcmigrate.agent import ram_backing
from nova_dcmigrate.agent import relay_wire as wire
from nova_dcmigrate.agent import return_gate
from nova_dcmigrate.agent.tls import PeerTLS
from nova_dcmigrate.exception import MigrationStateError
from nova_dcmigrate.stream import PAGE_SIZE
from nova_dcmigrate.stream import RamBlock
from nova_dcmigrate.stream import RamStart
from nova_dcmigrate.stream import ReaderState
from nova_dcmigrate.stream import StreamError
from nova_dcmigrate.stream import StreamReader
from nova_dcmigrate.stream import Preamble
from nova_dcmigrate.stream import StreamVisitor
from nova_dcmigrate.stream import StreamWriter
from nova_dcmigrate.stream import fastpath
from nova_dcmigrate.stream.constants import CMD_SWITCHOVER_START
from nova_dcmigrate.stream.constants import SECTION_END
from nova_dcmigrate.stream.constants import SECTION_PART

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
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if bufsize:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, bufsize)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, bufsize)


class MigrationSession:
    """State, counters and teardown shared by both roles."""

    role: Role

    def __init__(self, conf: Any, migration_id: str, secret: str,
                 attempt: int, tls: PeerTLS | None = None) -> None:
        self.conf = conf
        self.tls = tls or PeerTLS(None, None)
        #: The attempt's directory of the local UNIX socket (removed with
        #: the session).
        self.socket_dir = local_socket.attempt_dir(conf.socket_dir,
                                                   migration_id, attempt)
        self.socket_path = os.path.join(self.socket_dir,
                                        local_socket.SOCKET_NAME)
        self._own_dir = False
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

    def fail(self, reason: str, expected: bool = False) -> None:
        """Enter FAILED (unless already final) and close every socket.

        :param expected: the peer stopped the attempt on purpose (an
            abort): logged at INFO, operators alert on ERROR.
        """
        with self._lock:
            if self.state in FINAL_STATES:
                return
            self.error = reason
            self._set(SessionState.FAILED)
        log = LOG.info if expected else LOG.error
        log("migration %(mid)s attempt %(att)d %(role)s failed: "
            "%(reason)s", {"mid": self.migration_id, "att": self.attempt,
                           "role": self.role.value, "reason": reason})
        self._close_all()
        self.log_counters()

    def log_counters(self) -> None:
        """One line per ended attempt with everything it moved."""
        st = self.status()
        LOG.info("migration %(mid)s attempt %(att)d %(role)s ended %(state)s"
                 " after %(secs).2f s: counters %(c)s%(extra)s",
                 {"mid": self.migration_id, "att": self.attempt,
                  "role": self.role.value, "state": st["state"],
                  "secs": st["elapsed"], "c": st["counters"],
                  "extra": "; redirect %s" % st["redirect"]
                  if "redirect" in st else ""})

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
        self.log_counters()

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
            own_dir, self._own_dir = self._own_dir, False
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass
        if own_dir:
            local_socket.remove_attempt_dir(self.socket_dir)

    def _local_uids(self) -> set[int]:
        """Who may be at the other end of the local socket: root (the
        source libvirtd) or the QEMU user."""
        uid, _gid = local_socket.resolve_owner(self.conf.qemu_user,
                                               self.conf.qemu_group)
        return {0, uid}

    def _make_socket_dir(self, uid: int, gid: int) -> None:
        with self._lock:
            if self.state in FINAL_STATES:
                raise exception.SessionFailed(
                    migration_id=self.migration_id,
                    reason="session already ended")
            self._own_dir = True
        local_socket.make_attempt_dir(self.conf.socket_dir,
                                      self.migration_id, self.attempt,
                                      uid, gid)

    def _connect_tcp(self, address: str, port: int,
                     timeout: float) -> socket.socket:
        """A tracked, connected (and with peer_tls, TLS-wrapped) socket to
        another agent.

        :raises OSError: cannot connect.
        """
        sock = self._track(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        sock.settimeout(timeout)
        try:
            sock.connect((address, port))
            _tune(sock, self.conf.socket_buffer)
            sock.settimeout(self.conf.handshake_timeout)
            wrapped = self.tls.wrap_client(sock, address)
        except BaseException:
            sock.close()
            raise
        if wrapped is not sock:
            self._track(wrapped)
        return wrapped

    def close(self) -> None:
        self.abort("session removed")
        self._close_all()

    def _run_guarded(self, func: Any, *args: Any) -> None:
        try:
            func(*args)
        except StreamError as err:
            self.fail("invalid migration stream: %s" % err)
        except exception.PeerAborted as err:
            self.fail(str(err), expected=True)
        except exception.AgentError as err:
            self.fail(str(err))
        except OSError as err:
            self.fail("socket error: %s" % err)
        except Exception as err:  # noqa: BLE001 - a thread must not die
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
            "link": None if self._conn is None else {
                "protocol": self._conn.version,
                "tls": self._conn.tls_version},
        }


class _SourceTracker(StreamVisitor):
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


class _StoreVisitor(StreamVisitor):
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


class _SourceFilter(StreamVisitor):
    """Source side of a redirect: drops pages the destination will hold.

    A page is dropped iff its digest equals what the new destination is
    going to hold for it (reference section 2.5, rule 1) -- except held
    pages below the frontier during the first pass, which the source
    sends itself so that it and the holders finish together.  Held pages
    skipped above the frontier are kept (within a budget) so that a later
    raise of the frontier can still be honoured: :meth:`emit_assist`.
    """

    def __init__(self, session: SourceSession, layout: Layout,
                 flags: list[bytearray], expected: list[bytearray],
                 seed: int) -> None:
        self.s = session
        self.layout = layout
        self.flags = flags
        self.expected = expected
        self.seed = seed
        self.zero = zero_digest(seed)
        self.w = StreamWriter()
        self.covered = [bytearray(n) for n in layout.npages]
        self.ncovered = 0
        self.position = 0
        self.pass1_done = False
        self.dropped = 0
        self.dropped_bytes = 0
        self.forwarded_held = 0
        # The switchover has begun: no more pages of our own in the stream.
        self.completing = False
        self._native: Any = fastpath.native
        if self._native is not None:
            self.fast_records = self._fast_records

    def _fast_records(self, buf: bytearray, pos: int, end: int,
                      block: RamBlock) -> tuple[int, int, int]:
        """:meth:`on_page`/:meth:`on_zero` for a run of records, in native
        code, under the frontier lock as
        :meth:`SourceSession.held_page_below_frontier`.
        """
        target = self.w.native_target(block)
        if target is None:
            return pos, 0, 0
        out, idstr, cont = target
        idx = block.index
        s = self.s
        layout = self.layout
        with s._frontier_lock:
            (pos, pages, zeros, ncovered, position, dropped, forwarded,
             kept, s.lowest_skip, emitted) = self._native.filter_records(
                buf, pos, end, block, layout.bases[idx], self.covered[idx],
                self.ncovered, layout.total_pages, self.flags[idx],
                self.expected[idx], self.seed, self.zero, s.frontier,
                s.assist, s.assist_budget, s.lowest_skip, out, idstr, cont)
        if kept:
            s.counters["assist_pages_kept"] = \
                s.counters.get("assist_pages_kept", 0) + kept
        if emitted:
            self.w.native_appended(block)
        if position >= 0:
            self.position = position
        self.ncovered = ncovered
        if ncovered == layout.total_pages:
            self.pass1_done = True
        self.dropped += dropped
        self.dropped_bytes += dropped * PAGE_SIZE
        self.forwarded_held += forwarded
        return pos, pages, zeros

    def on_preamble(self, preamble: Preamble) -> None:
        self.w.raw(preamble.raw)

    def on_command(self, cmd: int, data: bytes, raw: bytes) -> None:
        if cmd == CMD_SWITCHOVER_START:
            self.completing = True
        self.w.raw(raw)

    def on_ram_start(self, start: RamStart) -> None:
        mine = Layout.from_start(start)
        if (mine.names, mine.lengths) != (self.layout.names,
                                          self.layout.lengths):
            raise exception.SessionFailed(
                migration_id=self.s.migration_id,
                reason="the VM's RAM layout changed since the pages were "
                       "received; the held pages cannot be used")
        self.w.ram_start(start)

    def on_section_begin(self, kind: int, section_id: int) -> None:
        if kind == SECTION_END:
            self.completing = True
        self.w.begin_section(kind)

    def _cover(self, idx: int, page: int) -> None:
        cov = self.covered[idx]
        if not cov[page]:
            cov[page] = 1
            self.ncovered += 1
            self.position = self.layout.bases[idx] + page
            if self.ncovered == self.layout.total_pages:
                self.pass1_done = True

    def on_page(self, block: RamBlock, page: int, data: memoryview) -> None:
        idx = block.index
        if not self.pass1_done:
            self._cover(idx, page)
        d = xxhash.xxh3_128_digest(data, self.seed)
        fl = self.flags[idx]
        flag = fl[page]
        di = page * DIGEST_LEN
        exp = self.expected[idx]
        if flag and exp[di:di + DIGEST_LEN] == d:
            if (flag == planmod.FLAG_REMOTE and not self.pass1_done
                    and self.s.held_page_below_frontier(
                        self.layout.bases[idx] + page, block, page, data)):
                self.forwarded_held += 1
            else:
                self.dropped += 1
                self.dropped_bytes += len(data)
                return
        elif self.s.assist:
            self.s.forget_assist(self.layout.bases[idx] + page)
        self.w.page(block, page, data)
        exp[di:di + DIGEST_LEN] = d
        fl[page] = 3          # the destination holds what we sent

    def on_zero(self, block: RamBlock, page: int) -> None:
        idx = block.index
        if not self.pass1_done:
            self._cover(idx, page)
        # Zero records are 9-16 bytes: always send them (reference 2.5).
        if self.s.assist:
            self.s.forget_assist(self.layout.bases[idx] + page)
        self.w.zero(block, page)
        di = page * DIGEST_LEN
        self.expected[idx][di:di + DIGEST_LEN] = self.zero
        self.flags[idx][page] = 3

    def on_section_end(self, kind: int, section_id: int) -> None:
        self.w.end_section()

    def on_tail(self, data: memoryview) -> None:
        self.completing = True
        self.w.raw(data)

    def emit_assist(self, pages: list[tuple[RamBlock, int, bytes]]) -> bool:
        """Write held pages the frontier now gives back to the source.

        Between reads from QEMU the writer is either between sections or
        inside one of QEMU's PART sections; pages may go into either.
        Returns False (nothing written) once the switchover has begun: the
        holders still relay those pages then.
        """
        w = self.w
        if not w.ram_started or self.completing:
            return False
        own = not w.section_kind
        if own:
            w.begin_section(SECTION_PART)
        for block, page, data in pages:
            w.page(block, page, data)
        if own:
            w.end_section()
        self.forwarded_held += len(pages)
        return True


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
                 attempt: int, dest_address: str, dest_port: int,
                 tls: PeerTLS | None = None) -> None:
        super().__init__(conf, migration_id, secret, attempt, tls)
        self.dest_address = dest_address
        self.dest_port = dest_port
        self._listener: socket.socket | None = None
        self.tracker = _SourceTracker(self, digest_seed(self.secret))
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
        self.filter: _SourceFilter | None = None

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
        _tune(qsock, self.conf.socket_buffer)
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
                      f: _SourceFilter) -> None:
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
                _sync_counters(self, reader)
        self._end_of_stream(conn, reader)

    def _end_of_stream(self, conn: protocol.FramedConnection,
                       reader: StreamReader) -> None:
        """The source QEMU closed its side: complete, or fail if the
        stream stopped before its end (the migration was cancelled)."""
        _sync_counters(self, reader)
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
        f = _SourceFilter(self, self.layout, self.flags, self.expected,
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
                _sync_counters(self, reader)
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


class DestinationSession(MigrationSession):
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
        _tune(qsock, self.conf.socket_buffer)
        self.store.begin_attempt()
        self._hold_qemu_ram(qsock)
        if self.holders or self._store_has_pages():
            return self._run_merge(conn, qsock)
        self._transition(SessionState.STREAMING, {SessionState.CONNECTING})
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

    # -- merge mode (redirect / resume) -----------------------------------
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

    def _run_merge(self, conn: protocol.FramedConnection,
                   qsock: socket.socket) -> None:
        layout: Layout | None = None
        for i, holder in enumerate(self.holders, start=1):
            p = self._connect_holder(i, holder)
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
        inventories = [self._local_inventory(layout)]
        for p in self.pullers:
            assert p.inventory is not None
            inventories.append(p.inventory)
        self._inventories = inventories
        assignment = planmod.assign(layout, inventories)
        self.assignment = assignment
        remote = set(range(1, len(self.pullers) + 1))
        self.planner = planmod.FrontierPlanner(assignment, remote)
        rs, rh = self._expected_rates()
        self.frontier = self.planner.plan(0, layout.total_pages, rs, rh) \
            if remote and self.split else 0
        self.first_frontier = self.frontier
        # Tell the source what we will hold, and who holds it.
        conn.send(FrameType.LAYOUT, layout.to_json())
        owner = assignment.owner
        for idx, base in enumerate(layout.bases):
            n = layout.npages[idx]
            for first in range(0, n, wire.SEND_RANGE):
                last = min(n, first + wire.SEND_RANGE)
                flags = bytes(
                    planmod.FLAG_NONE if owner[g] < 0 else
                    planmod.FLAG_LOCAL if owner[g] == merge.LOCAL else
                    planmod.FLAG_REMOTE
                    for g in range(base + first, base + last))
                digests = assignment.digests[(base + first) * DIGEST_LEN:
                                             (base + last) * DIGEST_LEN]
                conn.send(FrameType.EXPECTED, wire.encode_expected(
                    idx, first, flags, digests))
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

    def _final_ack(self, conn: protocol.FramedConnection,
                   reader: StreamReader) -> None:
        """Acknowledge the whole stream, best effort: once the source has
        our return EOF it may close as soon as it sent DATA_EOF, and a
        migration that completed must not be marked failed for that."""
        try:
            self._ack(conn, reader)
        except exception.AgentError:
            _sync_counters(self, reader)
            self.counters["acked_offset"] = reader.offset

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
