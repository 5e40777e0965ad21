"""Two real agent managers on loopback and UNIX-socket stand-ins for QEMU.

Each agent has a socket_dir of its own (one filesystem here, two hosts in
a deployment), so the source's socket and the destination QEMU's differ.

The stand-ins only move bytes (the agents never talk QEMU's protocol
beyond parsing the stream), so they exercise the real session pumps,
handshake, page store and failure handling without a guest.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
import uuid

from oslo_config import cfg

from nova_dcmigrate.agent.manager import AgentManager
from nova_dcmigrate.conf import agent as agent_conf


_DIRS: list[str] = []


def socket_dir() -> str:
    """A fresh, short socket_dir (removed at interpreter exit)."""
    d = tempfile.mkdtemp(prefix="dcm-", dir="/tmp")
    os.chmod(d, 0o755)
    _DIRS.append(d)
    return d


def remove_socket_dirs() -> None:
    while _DIRS:
        shutil.rmtree(_DIRS.pop(), ignore_errors=True)


atexit.register(remove_socket_dirs)


def make_conf(**overrides) -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    agent_conf.register_opts(conf)
    conf([], project="nova-dcmigrate-test")
    conf.set_override("socket_dir", socket_dir(), "dcmigrate_agent")
    conf.set_override("qemu_user", "root", "dcmigrate_agent")
    conf.set_override("qemu_group", "root", "dcmigrate_agent")
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
    """Listens like `-incoming unix:<path>` once :meth:`listen` is given
    the path the destination agent returned; records the stream; when its
    input ends it answers on the return path and closes."""

    def __init__(self, reply: bytes = b"SHUT", close_after: int | None = None,
                 early_return_eof: bool = False) -> None:
        self.reply = reply
        self.early_return_eof = early_return_eof
        self.close_after = close_after
        self.received = bytearray()
        self.path: str | None = None
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def listen(self, path: str) -> FakeDestQemu:
        self.path = path
        self.sock.bind(path)
        self.sock.listen(1)
        self.sock.settimeout(20)
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            c, _ = self.sock.accept()
        except OSError:
            return
        finally:
            self.sock.close()
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

    def __init__(self, path: str, data: bytes, chunk: int = 65536,
                 stop_after: int | None = None,
                 pause: tuple[int, float] | None = None) -> None:
        """:param pause: (offset, seconds): stop sending at ``offset`` for
            that long, as QEMU does while it waits for the switchover."""
        self.path = path
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
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(20)
            s.connect(self.path)
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

    def prepare(self, dest_qemu: FakeDestQemu | None, attempt: int = 0,
                src_secret: str | None = None) -> str:
        """Prepare both agents, start ``dest_qemu`` on the destination's
        socket (None: nothing listens there); returns the source agent's
        socket path."""
        d = self.dst.prepare_destination(None, self.migration_id,
                                         self.secret, attempt=attempt)
        if dest_qemu is not None:
            dest_qemu.listen(d["socket"])
        s = self.src.prepare_source(None, self.migration_id,
                                    src_secret or self.secret, "127.0.0.1",
                                    self.dst.listener.port, attempt)
        return s["socket"]

    def session(self, side: str, attempt: int = 0):
        mgr = self.src if side == "src" else self.dst
        return mgr.sessions[(self.migration_id, attempt)]

    def stop(self) -> None:
        self.src.stop()
        self.dst.stop()
