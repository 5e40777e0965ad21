"""One migration attempt as seen by one agent: its state and teardown.

A session is one attempt of one migration on one agent, in the source role
(:mod:`.source`) or the destination role (:mod:`.destination`).  This
module holds what both roles share: the state machine, the sockets and
threads of the attempt, and the failure rule.

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
import hashlib
import hmac
import os
import socket
import threading
import time
from typing import Any

from oslo_log import log as logging

from nova_dcmigrate.agent import exception
from nova_dcmigrate.agent import local_socket
from nova_dcmigrate.agent import protocol
from nova_dcmigrate.agent.protocol import FrameType
from nova_dcmigrate.agent.tls import PeerTLS
from nova_dcmigrate.exception import MigrationStateError
from nova_dcmigrate.stream import StreamError
from nova_dcmigrate.stream import StreamReader

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


def tune_socket(sock: socket.socket, bufsize: int) -> None:
    """No Nagle delay on agent links; small buffers keep backpressure."""
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
            tune_socket(sock, self.conf.socket_buffer)
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


def digest_seed(secret: bytes) -> int:
    """Per-migration digest seed, derived so both agents agree on it."""
    return int.from_bytes(
        hmac.new(secret, b"dcmigrate-digest-seed", hashlib.sha256
                 ).digest()[:8], "big")


def sync_counters(session: MigrationSession, reader: StreamReader) -> None:
    """Copy the reader's record counts into the session's counters."""
    c = session.counters
    c["pages"] = reader.pages
    c["zero_pages"] = reader.zero_pages
    c["sections"] = reader.sections
