"""The destination QEMU's guest RAM, held open by its agent.

Why: a destination agent used to copy every page it forwarded into its
own store, so every migration needed the guest's RAM twice on the
destination.  Instead the agent opens the shared RAM files of the QEMU it
feeds (a memfd, or a file in libvirt's ``memory_backing_dir``) and keeps
the descriptors: they stay readable after QEMU exits (a redirect's abort
kills it), so the agent can relay the pages it forwarded without having
copied them.  The memory is QEMU's own: a plain migration costs the
destination nothing but the agent's per-page digests.

How the QEMU is found: it is the process at the other end of the agent's
connection to it (``SO_PEERCRED`` on a UNIX socket; on loopback TCP, the
process holding the socket whose inode ``/proc/net/tcp`` gives for that
connection, looked up among the processes of the agent's network
namespace).  Its RAM files are the descriptors that are regular files
mapped shared (``/proc/<pid>/maps``, flag ``s``) over their whole length
-- what ``memory-backend-memfd`` and ``memory-backend-file,share=on``
create.  Needs root (or ``CAP_SYS_PTRACE`` over QEMU) and a shared PID
view of the host.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import stat
import struct
import time

from oslo_log import log as logging

from nova_dcmigrate.agent import exception

LOG = logging.getLogger(__name__)

#: QEMU frees a backend's memory when it exits with this property set, so
#: the held descriptor would read zeros.
DISCARD_MARKERS = (b'"discard-data":true', b"discard-data=on")


@dataclasses.dataclass
class RamFile:
    """One shared RAM file of QEMU, opened read-only by the agent."""

    fd: int
    size: int
    label: str          # what /proc/<pid>/fd/<n> pointed to

    def held_bytes(self) -> int:
        """Memory the file occupies now (pinned while we hold it)."""
        try:
            return os.fstat(self.fd).st_blocks * 512
        except OSError:
            return 0


class QemuRam:
    """The shared RAM files of one QEMU process, kept open until closed."""

    def __init__(self, pid: int, files: list[RamFile]) -> None:
        self.pid = pid
        self.files = files
        self.closed = False

    def __repr__(self) -> str:
        return "<QemuRam pid %d: %s>" % (
            self.pid, ", ".join("%s (%d)" % (f.label, f.size)
                                for f in self.files))

    def candidates(self, size: int) -> list[RamFile]:
        return [f for f in self.files if f.size == size]

    def held_bytes(self) -> int:
        return 0 if self.closed else sum(f.held_bytes() for f in self.files)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for f in self.files:
            try:
                os.close(f.fd)
            except OSError:
                pass
        LOG.debug("released the guest RAM of QEMU pid %d", self.pid)


def _tcp_inode(sock: socket.socket) -> int | None:
    """Inode of the peer end of a loopback TCP connection we made."""
    lhost, lport = sock.getsockname()[:2]
    rhost, rport = sock.getpeername()[:2]
    fam = sock.family
    table = "/proc/self/net/tcp6" if fam == socket.AF_INET6 else \
        "/proc/self/net/tcp"

    def enc(host: str, port: int) -> str:
        # /proc prints each 32-bit word of the address in host order.
        raw = socket.inet_pton(fam, host)
        words = struct.unpack("=%dI" % (len(raw) // 4), raw)
        return "".join("%08X" % w for w in words) + ":%04X" % port

    # The peer's socket has local = their address, remote = ours.
    want = (enc(rhost, rport), enc(lhost, lport))
    try:
        with open(table) as f:
            next(f)
            for line in f:
                parts = line.split()
                if (parts[1], parts[2]) == want:
                    # 0 while the connection waits in the accept queue.
                    return int(parts[9]) or None
    except (OSError, StopIteration, IndexError, ValueError):
        return None
    return None


def _pids_holding(inode: int) -> list[int]:
    target = "socket:[%d]" % inode
    try:
        my_net = os.readlink("/proc/self/ns/net")
    except OSError:
        my_net = None
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        base = "/proc/%s" % entry
        try:
            if my_net is not None and \
                    os.readlink(base + "/ns/net") != my_net:
                continue
            fds = os.listdir(base + "/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink("%s/fd/%s" % (base, fd)) == target:
                    found.append(int(entry))
                    break
            except OSError:
                continue
    return found


def peer_pid(sock: socket.socket) -> int | None:
    """PID of the local process at the other end of ``sock``, or None."""
    if sock.family == socket.AF_UNIX:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                struct.calcsize("3i"))
        pid = struct.unpack("3i", creds)[0]
        return pid or None
    inode = _tcp_inode(sock)
    if inode is None:
        return None
    pids = [p for p in _pids_holding(inode) if p != os.getpid()]
    return pids[0] if pids else None


def _shared_mappings(pid: int) -> dict[int, int]:
    """inode -> bytes mapped shared from offset 0 (``/proc/<pid>/maps``)."""
    out: dict[int, int] = {}
    with open("/proc/%d/maps" % pid) as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) < 6 or parts[1][3] != "s" or \
                    int(parts[2], 16) != 0:
                continue
            start, end = (int(x, 16) for x in parts[0].split("-"))
            inode = int(parts[4])
            out[inode] = max(out.get(inode, 0), end - start)
    return out


def open_qemu_ram(pid: int) -> QemuRam:
    """Open every shared RAM file of QEMU ``pid`` read-only.

    :raises BackingUnavailable: QEMU has none (anonymous guest RAM), or
        it discards its RAM on exit, or /proc cannot be read.
    """
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            cmdline = f.read()
        if any(m in cmdline for m in DISCARD_MARKERS):
            raise exception.BackingUnavailable(
                pid=pid, reason="QEMU discards its RAM when it exits "
                "(discard-data)")
        mapped = _shared_mappings(pid)
        fd_dir = "/proc/%d/fd" % pid
        entries = os.listdir(fd_dir)
    except OSError as err:
        raise exception.BackingUnavailable(pid=pid, reason=str(err)) from err
    files: list[RamFile] = []
    seen: set[int] = set()
    for name in entries:
        path = "%s/%s" % (fd_dir, name)
        try:
            st = os.stat(path)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_ino in seen or \
                mapped.get(st.st_ino, -1) != st.st_size or not st.st_size:
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            label = os.readlink(path)
        except OSError:
            continue
        if os.fstat(fd).st_ino != st.st_ino:
            os.close(fd)
            continue
        seen.add(st.st_ino)
        files.append(RamFile(fd, st.st_size, label))
    if not files:
        raise exception.BackingUnavailable(
            pid=pid, reason="no shared RAM file (the guest's RAM is "
            "anonymous: boot it with a memfd or shared file memory "
            "backing)")
    return QemuRam(pid, files)


def attach(sock: socket.socket, wait: float = 3.0) -> QemuRam:
    """Open the RAM of the QEMU at the other end of ``sock``.

    :param wait: seconds to wait for QEMU to accept the connection (until
        then no process holds its end).
    :raises BackingUnavailable: see :func:`open_qemu_ram`.
    """
    deadline = time.monotonic() + wait
    while True:
        pid = peer_pid(sock)
        if pid is not None or time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    if pid is None:
        raise exception.BackingUnavailable(
            pid=0, reason="cannot tell which process the migration "
            "connection goes to")
    return open_qemu_ram(pid)
