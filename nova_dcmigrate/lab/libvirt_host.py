"""Real libvirtd "hosts" inside lab hosts.

Each :class:`LibvirtHost` is a monolithic ``libvirtd`` plus its ``virtlogd``
running in one lab host's network namespace and in a private mount and UTS
namespace of its own (testbed notes, section 7)::

    ip netns exec <host netns> unshare -m -u --propagation private start.sh

``start.sh`` (written to ``<workdir>/libvirt-<host>/``) sets the hostname,
puts a fresh tmpfs on ``/run`` (so ``/run/libvirt``, the daemons' sockets
and the domains' state are private; this machine has no ``/run/libvirt`` to
mount over, and creating one would change the system), bind-mounts private
copies of ``/etc/libvirt``, ``/var/lib/libvirt``, ``/var/log/libvirt`` and
``/var/cache/libvirt`` from the host's state directory over the originals,
and starts ``virtlogd -d -p`` and ``libvirtd -d --listen -p``.  Nothing is
mounted in the root mount namespace, and the system's libvirt directories
are only read (copied).

Every host listens for ``qemu+tcp://<host address>/system`` with
``auth_tcp = "none"`` and has its own random ``host_uuid`` (libvirt refuses
to migrate between hosts that share one).  QEMU runs as root with
``security_driver = "none"``, no cgroups and ``namespaces = [ ]``: QEMU
stays in the host's mount namespace (by default libvirt gives every QEMU
a mount namespace of its own, with a private ``/dev``), so it is found,
and killed, with the daemons.

All processes a host starts (``virtlogd``, ``libvirtd`` and the domains'
QEMUs, which libvirt daemonises) stay in its private mount namespace, so
:meth:`LibvirtHost.stop` finds them by that namespace and kills them; the
namespace and its mounts vanish with its last process.  Hosts stop when
the lab closes (``Lab.add_cleanup``), before the lab removes the network
namespaces.

All hosts share one filesystem, which acts as shared storage: the guest
kernel and initrd are visible everywhere, and so is the lab workdir (serial
logs, RAM dumps).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
from pathlib import Path
import shlex
import shutil
import signal
import sys
import subprocess
import threading
import time
from typing import Iterable
import uuid

import libvirt
from oslo_log import log as logging

from nova_dcmigrate.lab import exception
from nova_dcmigrate.lab.topology import Lab

LOG = logging.getLogger(__name__)

#: Seconds until a host answers on qemu+tcp (the first connection waits
#: for QEMU capability probing, ~9 s on this machine under TCG).
START_TIMEOUT = 90.0
#: Seconds between SIGTERM and SIGKILL when stopping a host.
KILL_GRACE = 3.0
#: The system libvirt directories each host gets a private copy of.
LIBVIRT_DIRS = {
    "etc": Path("/etc/libvirt"),
    "lib": Path("/var/lib/libvirt"),
    "log": Path("/var/log/libvirt"),
    "cache": Path("/var/cache/libvirt"),
}
#: libvirtd debug logging kept in ``<host dir>/log/libvirtd.log``.
LOG_FILTERS = ("1:qemu.qemu_migration 1:qemu.qemu_process "
               "1:qemu.qemu_monitor_json 3:rpc 3:util 3:conf 3:qemu")


def _quiet_libvirt_errors(_ctx: object, _err: object) -> None:
    """libvirt-python prints every error to stderr; exceptions suffice."""


libvirt.registerErrorHandler(_quiet_libvirt_errors, None)


class LibvirtHostError(exception.LabError):
    msg_fmt = "libvirt host %(host)s: %(reason)s"


def _mnt_ns(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino
    except OSError:
        return None


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


class LibvirtHost:
    """A libvirtd running on one lab host; create with :meth:`start`."""

    def __init__(self, lab: Lab, host: str,
                 shared_filesystems: Iterable[str] = ()) -> None:
        self.lab = lab
        #: Paths libvirt must treat as shared storage (qemu.conf): Nova's
        #: instances_path when all hosts share it, else libvirt refuses
        #: Nova's live migration as "unsafe".
        self.shared_filesystems = list(shared_filesystems)
        self.host = host
        lab_host = lab.hosts[host]
        self.address = lab_host.address
        self.netns = lab_host.netns
        self.hostname = f"lv-{lab.run_id}-{host}"[:63]
        self.host_uuid = str(uuid.uuid4())
        self.dir = Path(lab.workdir) / f"libvirt-{host}"
        self.run_dir = self.dir / "run"
        self.libvirtd_pidfile = self.run_dir / "libvirtd.pid"
        self.virtlogd_pidfile = self.run_dir / "virtlogd.pid"
        self.log_path = self.dir / "log" / "libvirtd.log"
        self.start_log = self.dir / "start.log"
        #: Inode of the host's private mount namespace, once started.
        self.mnt_ns: int | None = None
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()
        self._stopped = False

    def __repr__(self) -> str:
        return f"<LibvirtHost {self.host} {self.uri}>"

    @property
    def uri(self) -> str:
        """The host's libvirt URI, reachable from every lab host and the
        root namespace (through the lab bridge)."""
        return f"qemu+tcp://{self.address}/system"

    # -- start -------------------------------------------------------------

    @classmethod
    def start(cls, lab: Lab, host: str, *, timeout: float = START_TIMEOUT,
              seed_cache: Path | None = None,
              shared_filesystems: Iterable[str] = ()) -> LibvirtHost:
        """Start libvirtd on ``host`` and wait until it answers on TCP.

        :param seed_cache: a started host's ``cache`` directory to copy the
            QEMU capabilities from (libvirt revalidates them; saves the
            ~9 s probe on every further host).
        :raises LibvirtHostError: if the daemons do not start or answer.
        """
        self = cls(lab, host, shared_filesystems)
        lab.add_cleanup(self.stop)
        try:
            self._prepare(seed_cache)
            self._launch()
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _prepare(self, seed_cache: Path | None) -> None:
        if self.dir.exists():
            raise LibvirtHostError(host=self.host,
                                   reason=f"{self.dir} already exists")
        self.dir.mkdir(parents=True)
        for name, system_dir in LIBVIRT_DIRS.items():
            shutil.copytree(system_dir, self.dir / name, symlinks=True)
        self.run_dir.mkdir()
        # Never start the stock NAT network (dnsmasq, virbr0) on a host.
        autostart = self.dir / "etc" / "qemu" / "networks" / "autostart"
        if autostart.is_dir():
            for link in autostart.iterdir():
                link.unlink()
        if seed_cache is not None:
            caps = seed_cache / "qemu" / "capabilities"
            if caps.is_dir():
                shutil.copytree(caps, self.dir / "cache" / "qemu" /
                                "capabilities", dirs_exist_ok=True)
        with open(self.dir / "etc" / "libvirtd.conf", "a") as conf:
            conf.write(
                "\n# nova-dcmigrate lab host %(host)s\n"
                "listen_tls = 0\n"
                "listen_tcp = 1\n"
                "auth_tcp = \"none\"\n"
                "listen_addr = \"%(addr)s\"\n"
                "host_uuid = \"%(uuid)s\"\n"
                "log_filters = \"%(filters)s\"\n"
                "log_outputs = \"1:file:/var/log/libvirt/libvirtd.log\"\n"
                % {"host": self.host, "addr": self.address,
                   "uuid": self.host_uuid, "filters": LOG_FILTERS})
        with open(self.dir / "etc" / "qemu.conf", "a") as conf:
            conf.write(
                "\n# nova-dcmigrate lab host %(host)s\n"
                "user = \"root\"\n"
                "group = \"root\"\n"
                "dynamic_ownership = 0\n"
                "remember_owner = 0\n"
                "security_driver = \"none\"\n"
                "cgroup_controllers = [ ]\n"
                "namespaces = [ ]\n"
                "migration_address = \"%(addr)s\"\n"
                "migration_host = \"%(addr)s\"\n"
                % {"host": self.host, "addr": self.address})
            if self.shared_filesystems:
                conf.write("shared_filesystems = [ %s ]\n" % ", ".join(
                    '"%s"' % path for path in self.shared_filesystems))
        script = self.dir / "start.sh"
        q = shlex.quote
        status = self.run_dir / "daemons.status"
        daemons = (f"virtlogd -d -p {q(str(self.virtlogd_pidfile))} && "
                   f"libvirtd -d --listen -p {q(str(self.libvirtd_pidfile))}")
        mounts = "".join(
            f"mount --bind {q(str(self.dir / name))} {q(str(path))}\n"
            for name, path in LIBVIRT_DIRS.items())
        script.write_text(
            "#!/bin/sh\n"
            "# Runs in the host's netns and a private mount + UTS namespace.\n"
            "set -eu\n"
            f"hostname {q(self.hostname)}\n"
            "mount -t tmpfs -o mode=0755 dcm-lab-run /run\n"
            "mkdir -p /run/libvirt /run/lock\n"
            f"{mounts}"
            # The daemons run under a subreaper (see lab/reaper.py), as
            # under an init that reaps their QEMUs at once.
            f"rm -f {q(str(status))}\n"
            f"{q(sys.executable)} -m nova_dcmigrate.lab.reaper "
            f"{q(str(status))} sh -c {q(daemons)} &\n"
            f"while [ ! -s {q(str(status))} ]; do sleep 0.05; done\n"
            f"exit \"$(cat {q(str(status))})\"\n")
        script.chmod(0o755)

    def _launch(self) -> None:
        argv = ["ip", "netns", "exec", self.netns, "unshare", "-m", "-u",
                "--propagation", "private", str(self.dir / "start.sh")]
        started = time.monotonic()
        with open(self.start_log, "ab") as log:
            try:
                proc = subprocess.run(argv, stdin=subprocess.DEVNULL,
                                      stdout=log, stderr=subprocess.STDOUT,
                                      timeout=60, close_fds=True)
            except subprocess.TimeoutExpired as err:
                raise LibvirtHostError(
                    host=self.host,
                    reason=f"start script hung: {err}") from err
        pid = _read_pid(self.libvirtd_pidfile)
        # Either daemon identifies the namespace (stop() needs it even if
        # only virtlogd came up).
        for daemon in (pid, _read_pid(self.virtlogd_pidfile)):
            if daemon is not None and self.mnt_ns is None:
                self.mnt_ns = _mnt_ns(daemon)
        if proc.returncode != 0 or pid is None or _mnt_ns(pid) is None:
            raise LibvirtHostError(
                host=self.host,
                reason=f"start script exited {proc.returncode} (libvirtd "
                       f"pid {pid}): {self._tail(self.start_log)} "
                       f"{self._tail(self.log_path)}")
        LOG.info("libvirt host %s: libvirtd pid %d started in %.1f s "
                 "(%s, host uuid %s)", self.host, pid,
                 time.monotonic() - started, self.uri, self.host_uuid)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> float:
        """Wait until ``qemu+tcp://<addr>/system`` answers with QEMU
        capabilities; returns the seconds waited."""
        started = time.monotonic()
        deadline = started + timeout
        error: Exception | None = None
        while time.monotonic() < deadline:
            self._check_alive("waiting for it to answer")
            try:
                conn = libvirt.open(self.uri)
            except libvirt.libvirtError as err:
                error = err
                time.sleep(0.2)
                continue
            try:
                # Forces the QEMU capability probe (the slow part).
                conn.getDomainCapabilities(None, "x86_64", "pc", "qemu")
            except libvirt.libvirtError as err:
                conn.close()
                error = err
                time.sleep(0.2)
                continue
            with self._lock:
                if self._conn is None:
                    self._conn = conn
                else:
                    conn.close()
            elapsed = time.monotonic() - started
            LOG.info("libvirt host %s answers on %s after %.1f s", self.host,
                     self.uri, elapsed)
            return elapsed
        raise LibvirtHostError(
            host=self.host,
            reason=f"{self.uri} did not answer within {timeout:.0f} s: "
                   f"{error}; log {self.log_path}")

    def _check_alive(self, doing: str) -> None:
        pid = _read_pid(self.libvirtd_pidfile)
        if pid is None or _mnt_ns(pid) != self.mnt_ns:
            raise LibvirtHostError(
                host=self.host,
                reason=f"libvirtd (pid {pid}) is gone while {doing}: "
                       f"{self._tail(self.log_path)}")

    @staticmethod
    def _tail(path: Path, limit: int = 1500) -> str:
        try:
            return path.read_text(errors="replace")[-limit:].strip()
        except OSError:
            return ""

    # -- use ---------------------------------------------------------------

    @property
    def conn(self) -> libvirt.virConnect:
        """A shared connection to this host (opened on first use)."""
        with self._lock:
            if self._stopped:
                raise LibvirtHostError(host=self.host, reason="stopped")
            if self._conn is None or not self._conn.isAlive():
                self._conn = libvirt.open(self.uri)
            return self._conn

    def open(self) -> libvirt.virConnect:
        """A new connection of the caller's own (close it when done)."""
        return libvirt.open(self.uri)

    def pids(self) -> list[int]:
        """Every process in this host's private mount namespace."""
        if self.mnt_ns is None:
            return []
        own = os.getpid()
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != own and \
                    _mnt_ns(int(entry)) == self.mnt_ns:
                pids.append(int(entry))
        return pids

    def qemu_pid(self, domain: str) -> int | None:
        """PID of the QEMU running ``domain`` on this host, if any."""
        for pid in self.pids():
            argv = _cmdline(pid)
            if not argv or "qemu-system" not in os.path.basename(argv[0]):
                continue
            for flag, value in zip(argv, argv[1:]):
                if flag == "-name" and (value == f"guest={domain}" or
                                        value.startswith(f"guest={domain},")):
                    return pid
        return None

    def domain_log(self, domain: str) -> Path:
        """libvirt's per-domain QEMU log (``/var/log/libvirt/qemu``)."""
        return self.dir / "log" / "qemu" / f"{domain}.log"

    # -- stop --------------------------------------------------------------

    def stop(self) -> None:
        """Kill libvirtd, virtlogd and every QEMU of this host.

        Domains are not shut down gracefully: the lab is torn down.
        SIGTERM, then SIGKILL after :data:`KILL_GRACE` seconds.
        """
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()
        pids = self.pids()
        if not pids:
            return
        LOG.debug("libvirt host %s: stopping pids %s", self.host, pids)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + KILL_GRACE
            while time.monotonic() < deadline:
                pids = self.pids()
                if not pids:
                    LOG.info("libvirt host %s stopped", self.host)
                    return
                time.sleep(0.1)
            LOG.warning("libvirt host %s: %s survived %s", self.host,
                        ", ".join(f"{pid} ({' '.join(_cmdline(pid)[:1])})"
                                  for pid in pids), sig.name)
        raise LibvirtHostError(host=self.host,
                               reason=f"pids {pids} survive SIGKILL")


def libvirt_version() -> str:
    """The libvirt library's version, e.g. ``11.3.0`` (for reports)."""
    v = libvirt.getVersion()
    return f"{v // 1_000_000}.{v // 1000 % 1000}.{v % 1000}"


def start_libvirt_hosts(lab: Lab, hosts: Iterable[str] | None = None, *,
                        timeout: float = START_TIMEOUT,
                        shared_filesystems: Iterable[str] = ()
                        ) -> dict[str, LibvirtHost]:
    """Start a libvirtd on each of ``hosts`` (default: every lab host).

    The first host probes QEMU's capabilities; the others start in parallel
    from a copy of its capability cache, which libvirt revalidates.
    """
    names = list(hosts if hosts is not None else lab.hosts)
    if not names:
        return {}
    started = time.monotonic()
    shared = list(shared_filesystems)
    first = LibvirtHost.start(lab, names[0], timeout=timeout,
                              shared_filesystems=shared)
    result = {names[0]: first}
    seed = first.dir / "cache"
    with concurrent.futures.ThreadPoolExecutor(max(1, len(names) - 1)) as ex:
        futures = {name: ex.submit(LibvirtHost.start, lab, name,
                                   timeout=timeout, seed_cache=seed,
                                   shared_filesystems=shared)
                   for name in names[1:]}
        errors = []
        for name, future in futures.items():
            try:
                result[name] = future.result()
            except Exception as err:  # noqa: BLE001 - reported below
                errors.append(f"{name}: {err}")
    if errors:
        for host in result.values():
            host.stop()
        raise LibvirtHostError(host=",".join(names),
                               reason="; ".join(errors))
    LOG.info("libvirt hosts %s up in %.1f s", ", ".join(names),
             time.monotonic() - started)
    return result
