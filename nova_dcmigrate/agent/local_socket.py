"""UNIX sockets between an agent and its local libvirtd/QEMU.

Why: a TCP loopback port can be taken or reached by any local process
(or a container on the host network), which could then feed a migration
stream into a guest or break the migration.  A UNIX socket inside a
directory only the intended process can search cannot.

Layout, per attempt (the same path on both hosts: libvirt passes one
``unix://`` URI to the source libvirtd, which connects, and to the
destination QEMU, which binds)::

    <socket_dir>/                     root:root 0755, not writable by others
    <socket_dir>/<migration>.<n>/     source: root:root 0700
                                      destination: <qemu user>:<group> 0700
    <socket_dir>/<migration>.<n>/migration.sock

On the source the agent binds the socket (mode 0600) and accepts one
connection from root or the QEMU user (``SO_PEERCRED``); on the
destination QEMU binds it and the agent connects, checking that the
listener is root or the QEMU user.  The attempt's directory is removed
when its session ends.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import socket
import stat
import struct
import uuid
from typing import Any

from oslo_log import log as logging

from nova_dcmigrate.agent import exception

LOG = logging.getLogger(__name__)

SOCKET_NAME = "migration.sock"
#: sun_path is 108 bytes including the terminating NUL.
MAX_PATH = 107
_UCRED = struct.Struct("3i")     # pid, uid, gid


def attempt_dir(socket_dir: str, migration_id: str, attempt: int) -> str:
    """The attempt's private directory (a UUID and a number: no escape)."""
    return os.path.join(socket_dir, "%s.%d" % (uuid.UUID(migration_id),
                                               int(attempt)))


def socket_path(socket_dir: str, migration_id: str, attempt: int) -> str:
    return os.path.join(attempt_dir(socket_dir, migration_id, attempt),
                        SOCKET_NAME)


def resolve_owner(user: str, group: str) -> tuple[int, int]:
    """uid and gid of the QEMU user and group.

    :raises LocalSocketError: unknown user or group.
    """
    try:
        uid = pwd.getpwnam(user).pw_uid
        gid = grp.getgrnam(group).gr_gid
    except KeyError as err:
        raise exception.LocalSocketError(
            migration_id="-", path="-",
            reason="unknown QEMU user/group %s:%s ([dcmigrate_agent] "
                   "qemu_user, qemu_group)" % (user, group)) from err
    return uid, gid


def ensure_base(socket_dir: str) -> None:
    """Create ``socket_dir`` (root 0755) or check an existing one.

    :raises LocalSocketError: it is a symlink, not a directory, not owned
        by this agent's user, or writable by group or others.
    """
    try:
        os.makedirs(socket_dir, mode=0o755, exist_ok=True)
        st = os.lstat(socket_dir)
    except OSError as err:
        raise exception.LocalSocketError(migration_id="-", path=socket_dir,
                                         reason=str(err)) from err
    if not stat.S_ISDIR(st.st_mode):
        reason = "not a directory (or a symlink)"
    elif st.st_uid != os.geteuid():
        reason = "owned by uid %d, not %d" % (st.st_uid, os.geteuid())
    elif st.st_mode & 0o022:
        reason = "writable by group or others (mode %o)" % (st.st_mode &
                                                            0o777)
    else:
        return
    raise exception.LocalSocketError(migration_id="-", path=socket_dir,
                                     reason=reason)


def make_attempt_dir(socket_dir: str, migration_id: str, attempt: int,
                     uid: int, gid: int) -> str:
    """A fresh 0700 directory owned by uid:gid for one attempt's socket.

    A leftover of the same name (a crashed agent) is removed first.
    """
    ensure_base(socket_dir)
    path = attempt_dir(socket_dir, migration_id, attempt)
    sock = os.path.join(path, SOCKET_NAME)
    if len(sock.encode()) > MAX_PATH:
        raise exception.LocalSocketError(
            migration_id=migration_id, path=sock,
            reason="longer than %d bytes; use a shorter [dcmigrate_agent] "
                   "socket_dir" % MAX_PATH)
    remove_attempt_dir(path)
    try:
        os.mkdir(path, 0o700)
        os.chown(path, uid, gid)
        os.chmod(path, 0o700)
    except OSError as err:
        raise exception.LocalSocketError(migration_id=migration_id,
                                         path=path, reason=str(err)) from err
    return path


def _skip_missing(func: Any, path: str, exc_info: Any) -> None:
    """rmtree error handler: an entry already gone is fine (the session's
    own thread unlinks the socket while its directory is removed); a
    FileNotFoundError would otherwise stop rmtree and leave the
    directory behind."""
    if not issubclass(exc_info[0], FileNotFoundError):
        raise exc_info[1]


def remove_attempt_dir(path: str) -> None:
    """Remove an attempt's directory and whatever socket is left in it."""
    try:
        if os.path.islink(path):
            os.unlink(path)
        else:
            shutil.rmtree(path, onerror=_skip_missing)
    except FileNotFoundError:
        pass
    except OSError as err:
        LOG.warning("cannot remove migration socket directory %(p)s: "
                    "%(err)s", {"p": path, "err": err})


def clear_stale(socket_dir: str) -> int:
    """Remove attempt directories a previous agent left (at start-up)."""
    try:
        names = os.listdir(socket_dir)
    except FileNotFoundError:
        return 0
    n = 0
    for name in names:
        mid, _sep, att = name.rpartition(".")
        try:
            uuid.UUID(mid)
            int(att)
        except ValueError:
            continue
        remove_attempt_dir(os.path.join(socket_dir, name))
        n += 1
    return n


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end (``SO_PEERCRED``)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                          _UCRED.size)
    return int(_UCRED.unpack(raw)[1])


def listen(path: str) -> socket.socket:
    """Bind a 0600 UNIX socket at ``path`` and listen for one connection."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # The mode of the socket file comes from the socket inode (Linux).
        os.fchmod(sock.fileno(), 0o600)
        sock.bind(path)
        sock.listen(1)
    except OSError:
        sock.close()
        raise
    return sock


def check_peer(sock: socket.socket, allowed: set[int], migration_id: str,
               path: str) -> None:
    """:raises LocalSocketError: the peer's uid is not in ``allowed``."""
    uid = peer_uid(sock)
    if uid not in allowed:
        raise exception.LocalSocketError(
            migration_id=migration_id, path=path,
            reason="peer uid %d is not allowed (%s)"
                   % (uid, ", ".join(str(u) for u in sorted(allowed))))
