"""Accepts agent-to-agent connections and authenticates them.

A connection is handed to a session only after it proved the secret of
that session's migration.  Anything else (unknown migration, wrong secret,
garbage, a peer that stalls the handshake) is logged and dropped without
touching any running migration.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

from oslo_log import log as logging

from nova_dcmigrate.agent import exception
from nova_dcmigrate.agent import protocol

LOG = logging.getLogger(__name__)

# (hello) -> (secret, on_authenticated) or raises AgentError to reject.
Resolver = Callable[[protocol.Hello],
                    tuple[bytes, Callable[[protocol.FramedConnection], None]]]


class PeerListener:
    def __init__(self, address: str, port: int, resolver: Resolver,
                 handshake_timeout: float) -> None:
        self.address = address
        self.port = port
        self._resolver = resolver
        self._timeout = handshake_timeout
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.rejected = 0
        self.accepted = 0

    def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.address, self.port))
        sock.listen(64)
        self._sock = sock
        self.port = sock.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop,
                                        name="peer-listener", daemon=True)
        self._thread.start()
        LOG.info("accepting agent peers on %(a)s:%(p)d",
                 {"a": self.address, "p": self.port})

    def stop(self) -> None:
        self._stopping.set()
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                sock, addr = self._sock.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                continue
            threading.Thread(target=self._handshake, args=(sock, addr),
                             name="peer-handshake", daemon=True).start()

    def _handshake(self, sock: socket.socket,
                   addr: tuple[str, int]) -> None:
        peer = "%s:%d" % addr
        sock.settimeout(self._timeout)
        try:
            hello = protocol.read_hello(sock, peer)
            secret, on_auth = self._resolver(hello)
            conn = protocol.accept(sock, peer, hello, secret)
            sock.settimeout(None)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        except exception.AgentError as err:
            self.rejected += 1
            LOG.warning("dropping peer %(peer)s: %(err)s",
                        {"peer": peer, "err": err})
            sock.close()
            return
        except OSError as err:
            self.rejected += 1
            LOG.warning("dropping peer %(peer)s: %(err)s",
                        {"peer": peer, "err": err})
            sock.close()
            return
        self.accepted += 1
        try:
            on_auth(conn)
        except Exception as err:  # noqa: BLE001
            LOG.warning("peer %(peer)s authenticated but the session "
                        "refused it: %(err)s", {"peer": peer, "err": err})
            conn.close()
