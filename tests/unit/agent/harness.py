"""Two real agent managers on loopback and TCP stand-ins for QEMU.

The stand-ins only move bytes (the agents never talk QEMU's protocol
beyond parsing the stream), so they exercise the real session pumps,
handshake, page store and failure handling without a guest.
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
import uuid

from oslo_config import cfg

from nova_dcmigrate.agent.manager import AgentManager
from nova_dcmigrate.conf import agent as agent_conf


def make_conf(**overrides) -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    agent_conf.register_opts(conf)
    conf([], project="nova-dcmigrate-test")
    conf.set_override("peer_listen_address", "127.0.0.1", "dcmigrate_agent")
    conf.set_override("peer_port", 0, "dcmigrate_agent")
    conf.set_override("connect_timeout", 3.0, "dcmigrate_agent")
    conf.set_override("session_timeout", 10.0, "dcmigrate_agent")
    for k, v in overrides.items():
        conf.set_override(k, v, "dcmigrate_agent")
    return conf


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class FakeDestQemu:
    """Listens like `-incoming tcp:127.0.0.1:P`; records the stream; when
    its input ends it answers on the return path and closes."""

    def __init__(self, reply: bytes = b"SHUT", close_after: int | None = None,
                 early_return_eof: bool = False) -> None:
        self.port = free_port()
        self.reply = reply
        self.early_return_eof = early_return_eof
        self.close_after = close_after
        self.received = bytearray()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(1)
        self.sock.settimeout(20)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            c, _ = self.sock.accept()
        except OSError:
            return
        with c:
            c.sendall(b"HELLO-RP")     # return path from the first byte
            if self.early_return_eof:
                # Return path done before the stream ends (QEMU may close
                # its return path first).
                c.sendall(self.reply)
                c.shutdown(socket.SHUT_WR)
            while True:
                data = c.recv(1 << 20)
                if not data:
                    break
                self.received += data
                if (self.close_after is not None
                        and len(self.received) >= self.close_after):
                    return           # simulate QEMU dying mid-stream
            if not self.early_return_eof:
                c.sendall(self.reply)

    def close(self) -> None:
        self.sock.close()


class FakeSourceQemu:
    """Connects to the source agent like libvirt's fd would, sends the
    stream, then reads the return path until EOF."""

    def __init__(self, port: int, data: bytes, chunk: int = 65536,
                 stop_after: int | None = None,
                 pause: tuple[int, float] | None = None) -> None:
        """:param pause: (offset, seconds): stop sending at ``offset`` for
            that long, as QEMU does while it waits for the switchover."""
        self.port = port
        self.data = data
        self.chunk = chunk
        self.stop_after = stop_after
        self.pause = pause
        self.returned = bytearray()
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> FakeSourceQemu:
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=20)
        except OSError as err:
            self.error = err
            return
        reader = threading.Thread(target=self._read, args=(s,), daemon=True)
        reader.start()
        try:
            limit = len(self.data) if self.stop_after is None else \
                self.stop_after
            cuts = sorted({*range(0, limit, self.chunk), limit,
                           *([self.pause[0]] if self.pause else [])})
            for lo, hi in zip(cuts, cuts[1:]):
                if self.pause and lo == self.pause[0]:
                    time.sleep(self.pause[1])
                s.sendall(self.data[lo:hi])
            s.shutdown(socket.SHUT_WR)
        except OSError as err:
            self.error = err
        reader.join(20)
        s.close()

    def _read(self, s: socket.socket) -> None:
        try:
            while True:
                d = s.recv(65536)
                if not d:
                    return
                self.returned += d
        except OSError:
            return


class AgentPair:
    """A source and a destination AgentManager with one prepared attempt."""

    def __init__(self, **conf_overrides) -> None:
        self.src = AgentManager(make_conf(**conf_overrides).dcmigrate_agent,
                                "src")
        self.dst = AgentManager(make_conf(**conf_overrides).dcmigrate_agent,
                                "dst")
        self.src.start()
        self.dst.start()
        self.migration_id = str(uuid.uuid4())
        self.secret = secrets.token_hex(32)

    def prepare(self, dest_qemu_port: int, attempt: int = 0,
                src_secret: str | None = None) -> int:
        listen = free_port()
        self.dst.prepare_destination(None, self.migration_id, self.secret,
                                     dest_qemu_port, attempt)
        self.src.prepare_source(None, self.migration_id,
                                src_secret or self.secret, listen,
                                "127.0.0.1", self.dst.listener.port, attempt)
        return listen

    def session(self, side: str, attempt: int = 0):
        mgr = self.src if side == "src" else self.dst
        return mgr.sessions[(self.migration_id, attempt)]

    def stop(self) -> None:
        self.src.stop()
        self.dst.stop()
