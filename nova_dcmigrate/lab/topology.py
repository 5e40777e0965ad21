"""Emulate several hypervisor hosts on one machine with network namespaces.

Redirecting a live migration is only interesting when the hosts have links
of limited, different and changing capacity.  A :class:`Lab` gives each
"host" its own network namespace, joined to a bridge in the root namespace
by a veth pair, and shapes every host's link with ``tbf`` in both directions
(the kernel has no netem, fq or policing, see the testbed notes, so each
direction is shaped on its sending side).  The bridge carries a gateway
address, so services in the root namespace (RabbitMQ) are reachable from
every host.

::

    root netns                                host netns <prefix><run>-<host>
    bridge <prefix><run>-br (gateway .1)
      +-- <prefix><run>-0b  ==== veth ====  <prefix><run>-0h  (.2)
      +-- <prefix><run>-1b  ==== veth ====  <prefix><run>-1h  (.3)

Everything a lab creates is named after its run id and recorded, with the
owner's PID, in ``/run/nova-dcmigrate/labs/<run>.json`` before it is created,
so :func:`cleanup_stale` can remove what a killed run left behind without
touching labs that are still running.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import hashlib
import ipaddress
import json
import os
from pathlib import Path
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from typing import Any, Callable, Iterator, Mapping, TypeVar

from oslo_log import log as logging
from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns
from pyroute2.netlink.exceptions import NetlinkError

from nova_dcmigrate.lab import exception

LOG = logging.getLogger(__name__)

#: Prefix of every namespace, interface and temp dir a lab creates.
NAME_PREFIX = "dcm-"
#: Where each lab records what it created and who owns it.
STATE_DIR = Path("/run/nova-dcmigrate/labs")
#: Labs use 10.213.X.0/24 with X derived from the run id.
SUBNET_PREFIX = "10.213"
#: tbf: bound on queueing delay, and the minimum bucket size.
TBF_LATENCY = "50ms"
TBF_MIN_BURST = 32 * 1024
#: Ports handed out by :meth:`Lab.free_port` (below the ephemeral range).
PORT_RANGE = (20000, 32000)
#: Seconds between SIGTERM and SIGKILL when stopping processes.
KILL_GRACE = 5.0

MAX_HOSTS = 99
_RUN_ID_RE = re.compile(r"^[a-z0-9]{1,6}$")
_HOST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
_RATE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-z]*)\s*$")
_RATE_UNITS = {
    "": 1, "bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9,
    "tbit": 10**12, "bps": 8, "kbps": 8 * 10**3, "mbps": 8 * 10**6,
    "gbps": 8 * 10**9,
}
_CLONE_NEWNET = 0x40000000
_T = TypeVar("_T")


def parse_rate(rate: str | int) -> int:
    """Convert a tc-style rate ("300mbit", "1gbit", "10mbps") to bit/s.

    As in tc, ``bit`` units are decimal bits per second and ``bps`` units
    bytes per second; a bare number is bit/s.

    :raises InvalidLabSpec: for an unknown unit or a non-positive rate.
    """
    if isinstance(rate, int):
        value: float = rate
    else:
        match = _RATE_RE.match(rate.lower())
        if not match or match.group(2) not in _RATE_UNITS:
            raise exception.InvalidLabSpec(
                reason=f"cannot parse link rate {rate!r} (use e.g. "
                       f"'300mbit', '1gbit', '10mbps')")
        value = float(match.group(1)) * _RATE_UNITS[match.group(2)]
    if value < 8000:
        raise exception.InvalidLabSpec(
            reason=f"link rate {rate!r} is below 8 kbit/s")
    return int(value)


def parse_link(rate: str | int | None) -> tuple[int | None, int | None]:
    """A host's link: "300mbit" (both directions) or "UP/DOWN", e.g.
    "100mbit/1gbit" (upload 100 Mbit/s, download 1 Gbit/s); "none" or
    ``None`` for an unshaped direction."""
    if rate is None:
        return None, None
    if isinstance(rate, int):
        return parse_rate(rate), parse_rate(rate)
    parts = rate.split("/")
    if len(parts) > 2:
        raise exception.InvalidLabSpec(
            reason=f"link {rate!r}: use RATE or UP/DOWN")
    up = None if parts[0] in ("", "none") else parse_rate(parts[0])
    down_s = parts[-1]
    down = None if down_s in ("", "none") else parse_rate(down_s)
    return up, down


def format_rate(rate_bps: int | None) -> str:
    """Inverse of :func:`parse_rate` for logs: 300000000 -> "300mbit"."""
    if rate_bps is None:
        return "unshaped"
    for unit, factor in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if rate_bps >= factor and rate_bps % factor == 0:
            return f"{rate_bps // factor}{unit}"
    return f"{rate_bps}bit"


def tbf_burst(rate_bps: int) -> int:
    """Bucket size for a rate: 4 ms worth of bytes, at least 32 KiB."""
    return max(rate_bps // 8 // 250, TBF_MIN_BURST)


@dataclasses.dataclass(frozen=True)
class LabHost:
    """One emulated host: a network namespace with one address."""

    name: str
    netns: str
    address: str
    #: Interface inside the namespace (the host's "NIC").
    ifname: str = ""
    #: The veth end enslaved to the bridge in the root namespace.
    bridge_port: str = ""


class Lab:
    """A set of emulated hosts on one bridge; use as a context manager.

    :param hosts: host name -> link rate ("300mbit", "1gbit") or ``None`` for
        an unshaped link.  The rate applies to each direction separately.
    :param run_id: 1-6 characters ``[a-z0-9]`` naming this run; random if
        not given.
    :param keep_workdir: keep :attr:`workdir` (logs) on close.
    :raises LabPermissionError: when not running as root.
    :raises InvalidLabSpec: for bad host names, rates or a run id in use.
    :raises TopologyError: when creating a namespace or link fails; what
        was created so far is removed again.
    """

    def __init__(self, hosts: Mapping[str, str | None], *,
                 run_id: str | None = None,
                 keep_workdir: bool = False) -> None:
        if os.geteuid() != 0:
            raise exception.LabPermissionError(
                operation="create network namespaces", uid=os.geteuid())
        self.run_id = run_id or secrets.token_hex(3)
        self._validate(hosts)
        self.prefix = NAME_PREFIX
        self.bridge = f"{self.prefix}{self.run_id}-br"
        self.state_file = STATE_DIR / f"{self.run_id}.json"
        self.keep_workdir = keep_workdir
        self.hosts: dict[str, LabHost] = {}
        self.gateway_address = ""
        self.subnet: ipaddress.IPv4Network | None = None
        self._rates: dict[str, int | None] = {}
        self._down_rates: dict[str, int | None] = {}
        self._procs: list[subprocess.Popen[bytes]] = []
        self._cleanups: list[Callable[[], None]] = []
        self._ports: dict[str, int] = {}
        self._lock = threading.RLock()
        self._closed = False
        # True once our state file exists; before that close() must not
        # tear down names that may belong to another run.
        self._claimed = False
        self._owner_pid = os.getpid()
        self.workdir = Path(tempfile.mkdtemp(
            prefix=f"{self.prefix}{self.run_id}-"))
        atexit.register(self._atexit)
        started = time.monotonic()
        try:
            self._create(hosts)
        except BaseException:
            self.close()
            raise
        LOG.info("Lab %s up in %.2f s: bridge %s %s, hosts %s, workdir %s",
                 self.run_id, time.monotonic() - started, self.bridge,
                 self.gateway_address,
                 ", ".join(f"{h.name}={h.address}"
                           f"({format_rate(self._rates[h.name])})"
                           for h in self.hosts.values()),
                 self.workdir)

    # -- context manager ---------------------------------------------------

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- creation ------------------------------------------------------------

    def _validate(self, hosts: Mapping[str, str | None]) -> None:
        if not _RUN_ID_RE.match(self.run_id):
            raise exception.InvalidLabSpec(
                reason=f"run id {self.run_id!r} must be 1-6 characters "
                       f"[a-z0-9]")
        if not hosts:
            raise exception.InvalidLabSpec(reason="a lab needs a host")
        if len(hosts) > MAX_HOSTS:
            raise exception.InvalidLabSpec(
                reason=f"{len(hosts)} hosts requested, at most {MAX_HOSTS}")
        for name, rate in hosts.items():
            if not _HOST_RE.match(name):
                raise exception.InvalidLabSpec(
                    reason=f"host name {name!r} must match {_HOST_RE.pattern}")
            parse_link(rate)

    def _check_unused(self) -> None:
        """Refuse a run id whose state file or names already exist.

        Called under the state lock before anything is created: a lab only
        ever tears down what it claimed, never another run's resources.
        """
        if self.state_file.exists():
            raise exception.InvalidLabSpec(
                reason=f"run id {self.run_id} is in use (state file "
                       f"{self.state_file} exists; run 'dcmigrate-lab "
                       f"cleanup' if its owner is gone)")
        prefix = f"{self.prefix}{self.run_id}-"
        taken = [ns for ns in pr_netns.listnetns() if ns.startswith(prefix)]
        with IPRoute() as ipr:
            taken += [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()
                      if link.get_attr("IFLA_IFNAME", "").startswith(prefix)]
        if taken:
            raise exception.InvalidLabSpec(
                reason=f"run id {self.run_id} is in use: {', '.join(taken)} "
                       f"exist without a state file")

    def _state(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "prefix": self.prefix,
            "owner_pid": os.getpid(),
            "owner_start": _process_start_time(os.getpid()),
            "bridge": self.bridge,
            "subnet": str(self.subnet) if self.subnet else None,
            "workdir": str(self.workdir),
            "keep_workdir": self.keep_workdir,
            "netns": [h.netns for h in self.hosts.values()],
            "bridge_ports": [h.bridge_port for h in self.hosts.values()],
            "pids": [p.pid for p in self._procs],
        }

    def _write_state(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._state(), indent=2) + "\n")
        os.replace(tmp, self.state_file)

    def _create(self, hosts: Mapping[str, str | None]) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        for index, (name, rate) in enumerate(hosts.items()):
            # Names first, so the state file lists them before they exist.
            self.hosts[name] = LabHost(
                name=name, netns=f"{self.prefix}{self.run_id}-{name}",
                address="", ifname=f"{self.prefix}{self.run_id}-{index}h",
                bridge_port=f"{self.prefix}{self.run_id}-{index}b")
            self._rates[name], self._down_rates[name] = parse_link(rate)

        with _state_lock():
            self._check_unused()
            # Pick the subnet and claim it (bridge address) under the lock,
            # so two labs starting together cannot choose the same one.
            self.subnet = _pick_subnet(self.run_id)
            addresses = list(self.subnet.hosts())
            self.gateway_address = str(addresses[0])
            for index, name in enumerate(list(self.hosts)):
                self.hosts[name] = dataclasses.replace(
                    self.hosts[name], address=str(addresses[index + 1]))
            self._write_state()
            self._claimed = True
            with self._netlink("create bridge") as ipr:
                ipr.link("add", ifname=self.bridge, kind="bridge")
                br = ipr.link_lookup(ifname=self.bridge)[0]
                ipr.addr("add", index=br, address=self.gateway_address,
                         prefixlen=self.subnet.prefixlen)
                ipr.link("set", index=br, state="up")

        for host in self.hosts.values():
            self._create_host(host)

    @contextlib.contextmanager
    def _netlink(self, operation: str,
                 netns: str | None = None) -> Iterator[IPRoute]:
        try:
            with (IPRoute(netns=netns) if netns else IPRoute()) as ipr:
                yield ipr
        except (NetlinkError, OSError) as err:
            raise exception.TopologyError(run_id=self.run_id,
                                          operation=operation,
                                          reason=str(err)) from err

    def _create_host(self, host: LabHost) -> None:
        assert self.subnet is not None
        try:
            pr_netns.create(host.netns)
        except OSError as err:
            raise exception.TopologyError(
                run_id=self.run_id, operation=f"create netns {host.netns}",
                reason=str(err)) from err
        with self._netlink(f"create veth for host {host.name}") as ipr:
            ipr.link("add", ifname=host.bridge_port, kind="veth",
                     peer={"ifname": host.ifname, "net_ns_fd": host.netns})
            port = ipr.link_lookup(ifname=host.bridge_port)[0]
            br = ipr.link_lookup(ifname=self.bridge)[0]
            ipr.link("set", index=port, master=br, state="up")
        with self._netlink(f"configure host {host.name}", host.netns) as ns:
            lo = ns.link_lookup(ifname="lo")[0]
            ns.link("set", index=lo, state="up")
            nic = ns.link_lookup(ifname=host.ifname)[0]
            ns.addr("add", index=nic, address=host.address,
                    prefixlen=self.subnet.prefixlen)
            ns.link("set", index=nic, state="up")
        self._apply_rate(host, self._rates[host.name],
                         self._down_rates[host.name])

    # -- shaping -------------------------------------------------------------

    def _apply_rate(self, host: LabHost, up_bps: int | None,
                    down_bps: int | None) -> None:
        # Upload: egress of the host's NIC; download: egress of its bridge
        # port towards the host.
        for netns, ifname, rate_bps in ((host.netns, host.ifname, up_bps),
                                        (None, host.bridge_port, down_bps)):
            where = f"{ifname} ({netns or 'root netns'})"
            with self._netlink(f"shape {where}", netns) as ipr:
                index = ipr.link_lookup(ifname=ifname)[0]
                if rate_bps is None:
                    try:
                        ipr.tc("del", index=index, root=True)
                    except NetlinkError as err:
                        # No root qdisc configured: already unshaped.
                        if err.code not in (errno.ENOENT, errno.EINVAL):
                            raise
                else:
                    ipr.tc("replace", "tbf", index=index, handle="1:",
                           rate=f"{rate_bps}bit", burst=tbf_burst(rate_bps),
                           latency=TBF_LATENCY)

    def set_rate(self, host: str, rate: str | None) -> None:
        """Change a host's link rate while traffic flows.

        :param rate: e.g. "100mbit" (both directions), "100mbit/1gbit"
            (upload/download), or ``None`` to remove the shaping.
        """
        lab_host = self._host(host, "set a link rate")
        up, down = parse_link(rate)
        self._apply_rate(lab_host, up, down)
        self._rates[host], self._down_rates[host] = up, down
        LOG.info("Lab %s: host %s link rate now %s", self.run_id, host,
                 rate or "unshaped")

    def set_link(self, host: str, up: bool) -> None:
        """Cut (``up=False``) or restore a host's link to the switch."""
        lab_host = self._host(host, "change a link state")
        with self._netlink(f"set link of {host}") as ipr:
            index = ipr.link_lookup(ifname=lab_host.bridge_port)[0]
            ipr.link("set", index=index, state="up" if up else "down")
        LOG.info("Lab %s: host %s link %s", self.run_id, host,
                 "restored" if up else "cut")

    def rate(self, host: str) -> int | None:
        """The host's current upload rate in bit/s (``None``: unshaped)."""
        self._host(host, "read a link rate")
        return self._rates[host]

    def rates(self, host: str) -> tuple[int | None, int | None]:
        """(upload, download) rates in bit/s (``None``: unshaped)."""
        self._host(host, "read a link rate")
        return self._rates[host], self._down_rates[host]

    # -- processes -----------------------------------------------------------

    def _host(self, host: str, operation: str) -> LabHost:
        if self._closed:
            raise exception.LabClosedError(run_id=self.run_id,
                                           operation=operation)
        try:
            return self.hosts[host]
        except KeyError:
            raise exception.UnknownLabHost(run_id=self.run_id, host=host,
                                           hosts=", ".join(self.hosts))

    def spawn(self, host: str, argv: list[str], *, log_name: str,
              env: Mapping[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside ``host``'s namespace (``ip netns exec``).

        The process gets its own process group; stdout and stderr go to
        ``workdir/log_name``.  It is stopped when the lab closes.
        """
        lab_host = self._host(host, f"spawn {argv[0]}")
        log_path = self.workdir / log_name
        full = ["ip", "netns", "exec", lab_host.netns, *argv]
        with self._lock, open(log_path, "ab") as log:
            proc = subprocess.Popen(
                full, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
                close_fds=True, cwd=cwd or self.workdir,
                env=dict(env) if env is not None else None)
            self._procs.append(proc)
            self._write_state()
        LOG.debug("Lab %s: started pid %d on %s: %s (log %s)", self.run_id,
                  proc.pid, host, " ".join(argv), log_path)
        return proc

    def terminate(self, proc: subprocess.Popen[bytes],
                  grace: float = KILL_GRACE) -> int | None:
        """Stop a process started by :meth:`spawn` and its process group.

        SIGTERM first, SIGKILL after ``grace`` seconds.
        :returns: the exit status.
        """
        if proc.poll() is None:
            # The leader is alive, so its process group id is still ours.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                LOG.warning("Lab %s: pid %d ignored SIGTERM; killing it",
                            self.run_id, proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        return proc.returncode

    def add_cleanup(self, func: Callable[[], None]) -> None:
        """Run ``func`` on close, before processes and links are removed."""
        self._cleanups.append(func)

    # -- sockets and ports ---------------------------------------------------

    def open_socket(self, host: str, family: int = socket.AF_INET,
                    type: int = socket.SOCK_STREAM) -> socket.socket:
        """Create a socket inside ``host``'s namespace.

        The socket stays in that namespace for its whole life, so the
        caller can bind, listen or connect as if it ran on that host.
        """
        lab_host = self._host(host, "create a socket")
        return _in_netns(lab_host.netns,
                         lambda: socket.socket(family, type))

    def free_port(self, host: str) -> int:
        """A TCP port no one listens on at ``host``; never handed out twice."""
        lab_host = self._host(host, "allocate a port")
        with self._lock:
            port = self._ports.get(host, PORT_RANGE[0])
            while port < PORT_RANGE[1]:
                candidate = port
                port += 1
                sock = self.open_socket(host)
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    sock.bind((lab_host.address, candidate))
                except OSError:
                    continue
                finally:
                    sock.close()
                self._ports[host] = port
                return candidate
        raise exception.TopologyError(
            run_id=self.run_id, operation=f"allocate a port on {host}",
            reason=f"all ports in {PORT_RANGE} are taken")

    # -- teardown ------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def _atexit(self) -> None:
        # Forked children (pyroute2 forks to enter namespaces) inherit
        # atexit handlers; only the process that built the lab tears it down.
        if os.getpid() == self._owner_pid:
            self.close()

    def close(self) -> None:
        """Stop every process and remove namespaces, links and workdir.

        Safe to call more than once, and after a failed creation.  Errors
        are logged, not raised, so that they do not hide the failure that
        led to the close.
        """
        if os.getpid() != self._owner_pid:
            return
        with self._lock:
            if self._closed:
                return
            self._closed = True
        atexit.unregister(self._atexit)
        started = time.monotonic()
        for func in reversed(self._cleanups):
            try:
                func()
            except Exception:
                LOG.exception("Lab %s: cleanup %r failed", self.run_id, func)
        for proc in reversed(self._procs):
            try:
                self.terminate(proc)
            except Exception:
                LOG.exception("Lab %s: stopping pid %d failed", self.run_id,
                              proc.pid)
        if self._claimed:
            _teardown(self._state(), keep_workdir=self.keep_workdir)
        elif not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        LOG.info("Lab %s removed in %.2f s%s", self.run_id,
                 time.monotonic() - started,
                 f" (kept {self.workdir})" if self.keep_workdir else "")


# -- helpers shared with cleanup_stale --------------------------------------

@contextlib.contextmanager
def _state_lock() -> Iterator[None]:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(STATE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _pick_subnet(run_id: str) -> ipaddress.IPv4Network:
    """10.213.X.0/24 with X from the run id, avoiding networks in use."""
    used: list[ipaddress.IPv4Network] = []
    with IPRoute() as ipr:
        for msg in ipr.get_addr(family=socket.AF_INET):
            used.append(ipaddress.IPv4Interface(
                f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}").network)
        for msg in ipr.get_routes(family=socket.AF_INET):
            dst = msg.get_attr("RTA_DST")
            # Only specific routes: a 10/8 route would not stop a /24.
            if dst and msg["dst_len"] >= 24:
                used.append(
                    ipaddress.IPv4Network(f"{dst}/{msg['dst_len']}"))
    for path in STATE_DIR.glob("*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            used.append(ipaddress.IPv4Network(
                json.loads(path.read_text())["subnet"]))
    start = int(hashlib.sha256(run_id.encode()).hexdigest(), 16) % 254
    for offset in range(254):
        third = (start + offset) % 254 + 1
        candidate = ipaddress.IPv4Network(f"{SUBNET_PREFIX}.{third}.0/24")
        if not any(candidate.overlaps(net) for net in used):
            return candidate
    raise exception.TopologyError(run_id=run_id, operation="pick a subnet",
                                  reason=f"all of {SUBNET_PREFIX}.0.0/16 "
                                         f"is in use")


def _in_netns(netns: str, func: Callable[[], _T]) -> _T:
    """Run ``func`` in a short-lived thread that entered ``netns``.

    setns(CLONE_NEWNET) changes only the calling thread, and sockets keep
    the namespace they were created in, so this creates namespaced sockets
    without forking (os.setns arrives only in Python 3.12).
    """
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({netns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            result["value"] = func()
        except BaseException as err:  # handed to the caller below
            result["error"] = err

    thread = threading.Thread(target=run, name=f"netns-{netns}")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    value: _T = result["value"]
    return value


def _process_start_time(pid: int) -> int | None:
    """Start time (clock ticks since boot) of a process, None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces; fields resume after its ')'.
    return int(stat.rsplit(")", 1)[1].split()[19])


def _owner_alive(state: Mapping[str, Any]) -> bool:
    pid = state.get("owner_pid")
    if not isinstance(pid, int):
        return False
    start = _process_start_time(pid)
    return start is not None and start == state.get("owner_start")


def _pids_in_netns(netns: str) -> list[int]:
    try:
        ns_ino = os.stat(f"/run/netns/{netns}").st_ino
    except OSError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino == ns_ino:
                pids.append(int(entry))
        except OSError:
            continue
    return pids


def _kill_netns_processes(netns: str) -> None:
    """Stop whatever still runs in a namespace we are about to delete."""
    own = os.getpid()
    pids = [pid for pid in _pids_in_netns(netns) if pid != own]
    if not pids:
        return
    LOG.warning("Stopping processes left in netns %s: %s", netns, pids)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + KILL_GRACE
        while time.monotonic() < deadline:
            pids = [pid for pid in _pids_in_netns(netns) if pid != own]
            if not pids:
                return
            time.sleep(0.1)


def _teardown(state: Mapping[str, Any], keep_workdir: bool = False) -> None:
    """Remove everything a lab state record names; ignore what is gone."""
    run_id = state.get("run_id", "?")
    for netns in state.get("netns", []):
        try:
            _kill_netns_processes(netns)
            if netns in pr_netns.listnetns():
                pr_netns.remove(netns)
        except Exception:
            LOG.exception("Lab %s: removing netns %s failed", run_id, netns)
    try:
        with IPRoute() as ipr:
            # Deleting one veth end removes its peer too.
            for ifname in [*state.get("bridge_ports", []),
                           state.get("bridge")]:
                if not ifname:
                    continue
                for index in ipr.link_lookup(ifname=ifname):
                    try:
                        ipr.link("del", index=index)
                    except NetlinkError as err:
                        if err.code != errno.ENODEV:
                            raise
    except Exception:
        LOG.exception("Lab %s: removing links failed", run_id)
    workdir = state.get("workdir")
    if workdir and not keep_workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        (STATE_DIR / f"{run_id}.json").unlink()


def cleanup_stale(prefix: str = NAME_PREFIX) -> list[str]:
    """Remove labs left behind by runs whose owner process is dead.

    Labs whose owner is still alive are left alone.  Namespaces that carry
    the prefix but have no state record are only reported: without a
    record their owner cannot be checked.

    :returns: the run ids that were removed.
    """
    if os.geteuid() != 0:
        raise exception.LabPermissionError(operation="remove stale labs",
                                           uid=os.geteuid())
    removed = []
    known: set[str] = set()
    with _state_lock():
        for path in sorted(STATE_DIR.glob("*.json")):
            try:
                state = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                LOG.warning("Ignoring unreadable lab state %s: %s", path, err)
                continue
            if state.get("prefix") != prefix:
                continue
            known.update(state.get("netns", []))
            if _owner_alive(state):
                LOG.debug("Lab %s is alive (pid %s)", state.get("run_id"),
                          state.get("owner_pid"))
                continue
            LOG.info("Removing stale lab %s (owner pid %s is gone)",
                     state.get("run_id"), state.get("owner_pid"))
            _teardown(state, keep_workdir=bool(state.get("keep_workdir")))
            removed.append(str(state.get("run_id")))
    orphans = [ns for ns in pr_netns.listnetns()
               if ns.startswith(prefix) and ns not in known]
    if orphans:
        LOG.warning("Network namespaces %s look like lab leftovers but have "
                    "no state record in %s; not removing them (use "
                    "'ip netns del')", ", ".join(orphans), STATE_DIR)
    return removed
