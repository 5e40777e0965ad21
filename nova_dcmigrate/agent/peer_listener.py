"""Accepts agent-to-agent connections and authenticates them.

A connection is handed to a session only after it proved the secret of
that session's migration (inside TLS when ``peer_tls`` is set).  Anything
else (unknown migration, wrong secret or certificate, no common protocol
version, garbage, a peer that stalls the handshake, one connection too
many) is dropped without touching any running migration, and its socket
is closed on every path.  Warnings about dropped peers are rate-limited:
a flood of bad connections must not flood the log.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

from oslo_log import log as logging

from nova_dcmigrate.agent import exception
from nova_dcmigrate.agent import protocol
from nova_dcmigrate.agent.tls import PeerTLS

LOG = logging.getLogger(__name__)

# (hello) -> (secret, on_authenticated) or raises AgentError to reject.
Resolver = Callable[[protocol.Hello],
                    tuple[bytes, Callable[[protocol.FramedConnection], None]]]


class LogLimiter:
    """At most ``burst`` lines per ``interval`` seconds; the rest counted
    and reported with the next line let through."""

    def __init__(self, burst: int = 10, interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._window = -interval
        self._count = 0
        self.suppressed = 0

    def allow(self) -> tuple[bool, int]:
        """(log this line?, lines suppressed since the last one logged)."""
        with self._lock:
            now = self._clock()
            if now - self._window >= self.interval:
                self._window, self._count = now, 0
            if self._count >= self.burst:
                self.suppressed += 1
                return False, 0
            self._count += 1
            dropped, self.suppressed = self.suppressed, 0
            return True, dropped


class PeerListener:
    def __init__(self, address: str, port: int, resolver: Resolver,
                 handshake_timeout: float, max_connections: int = 64,
                 tls: PeerTLS | None = None) -> None:
        self.address = address
        self.port = port
        self._resolver = resolver
        self._timeout = handshake_timeout
        self._max = max_connections
        self._tls = tls or PeerTLS(None, None)
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        #: Connections in the handshake now (an authenticated one belongs
        #: to its session: one per prepared attempt or relay).
        self.open = 0
        self.rejected = 0
        self.accepted = 0
        self.over_limit = 0
        self._log = LogLimiter()

    def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.address, self.port))
            sock.listen(64)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self.port = sock.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop,
                                        name="peer-listener", daemon=True)
        self._thread.start()
        LOG.info("accepting agent peers on %(a)s:%(p)d (%(tls)s, at most "
                 "%(max)d connections)",
                 {"a": self.address, "p": self.port, "max": self._max,
                  "tls": "mutual TLS" if self._tls.enabled else
                  "no TLS: guest memory crosses the network unencrypted"})

    def stop(self) -> None:
        self._stopping.set()
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()

    def _warn(self, msg: str, args: dict[str, object]) -> None:
        ok, dropped = self._log.allow()
        if not ok:
            return
        if dropped:
            msg += " (%(dropped)d similar messages suppressed)"
            args = dict(args, dropped=dropped)
        LOG.warning(msg, args)

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                sock, addr = self._sock.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                time.sleep(0.05)     # e.g. EMFILE: do not spin
                continue
            with self._lock:
                full = self.open >= self._max
                if not full:
                    self.open += 1
            if full:
                self.over_limit += 1
                self.rejected += 1
                sock.close()
                self._warn("dropping peer %(peer)s: %(max)d connections "
                           "already open", {"peer": "%s:%d" % addr[:2],
                                            "max": self._max})
                continue
            try:
                threading.Thread(target=self._serve, args=(sock, addr),
                                 name="peer-handshake", daemon=True).start()
            except RuntimeError:
                self._release()
                sock.close()

    def _release(self) -> None:
        with self._lock:
            self.open -= 1

    def _serve(self, sock: socket.socket, addr: tuple[str, int]) -> None:
        try:
            done = self._handshake(sock, addr)
        finally:
            self._release()
        if done is None:
            return
        conn, on_auth = done
        try:
            on_auth(conn)
        except Exception as err:  # noqa: BLE001
            self._warn("peer %(peer)s authenticated but the session "
                       "refused it: %(err)s",
                       {"peer": conn.peer, "err": err})
            conn.close()

    def _handshake(self, sock: socket.socket, addr: tuple[str, int]
                   ) -> tuple[protocol.FramedConnection,
                              Callable[[protocol.FramedConnection], None]
                              ] | None:
        peer = "%s:%d" % addr[:2]
        try:
            sock.settimeout(self._timeout)
            sock = self._tls.wrap_server(sock)
            hello = protocol.read_hello(sock, peer)
            secret, on_auth = self._resolver(hello)
            conn = protocol.accept(sock, peer, hello, secret)
            sock.settimeout(None)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        except (exception.AgentError, OSError) as err:
            self.rejected += 1
            self._warn("dropping peer %(peer)s: %(err)s",
                       {"peer": peer, "err": err})
            sock.close()
            return None
        except BaseException:
            sock.close()
            raise
        self.accepted += 1
        return conn, on_auth
