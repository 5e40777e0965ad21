"""Live migration of lab guests between libvirt hosts, direct or via agents.

Two paths, both libvirt peer-to-peer live migrations driven by
``virDomainMigrateToURI3`` on the source host with
``LIVE | PEER2PEER | PERSIST_DEST | UNDEFINE_SOURCE``:

* **direct** (:func:`migrate_direct`): ``VIR_MIGRATE_PARAM_URI =
  tcp://<destination address>``; the destination QEMU listens on the lab
  network on a port libvirt allocates, and the source libvirtd connects
  to it;
* **through the dcmigrate agents** (:func:`migrate_via_agents`), exactly
  as :mod:`nova_dcmigrate.lab.via_agents` does over QMP: both agents are
  prepared over RPC first (they create the attempt's socket directories
  and return the path), then ``VIR_MIGRATE_PARAM_URI = unix://<path>``
  makes the destination QEMU bind that path on the destination host and
  the source libvirtd connect to it on the source host, where the source
  agent waits.  Each lab host has its own ``/run`` (private mount
  namespace), and its agent runs in that namespace, so the one path names
  two sockets.

Job statistics (``virDomainGetJobStats``) are polled on the source while
the job runs; the final ones come from the destination
(``jobStats(VIR_DOMAIN_JOB_STATS_COMPLETED)``, which libvirt fills from
the source's statistics sent in the migration cookie), because with
``UNDEFINE_SOURCE`` the domain is gone from the source.

RAM verification: exact, and without touching the migration
------------------------------------------------------------
libvirt kills the source QEMU as soon as the migration completed
(Confirm phase), so its RAM cannot be dumped afterwards.  Suspending the
source near the end and dumping it (``pmemsave`` through
``qemuMonitorCommand``) while the migration still runs would work only if
the dump finished before libvirt completes the migration and kills QEMU,
a race (QMP commands also need the BQL, which QEMU holds during
stop-and-copy); and it changes what is tested: the switchover would happen
on a guest that was already stopped.

Instead, the lab guest's RAM is a shared memfd
(:mod:`nova_dcmigrate.lab.libvirt_guest`), and before the migration
starts the lab opens that memfd through ``/proc/<source QEMU>/fd``.  The
descriptor refers to the RAM block itself, and keeps it alive after libvirt
killed the source QEMU.  The comparison happens after the migration:

1. the migration runs with ``VIR_MIGRATE_PAUSED`` in addition, so the
   destination stays paused (no guest code runs there, its RAM cannot
   change);
2. after ``migrateToURI3`` returned, the source QEMU must be gone (waited
   for, else the check fails).  The source guest's vCPUs were stopped by
   QEMU at the switchover (``finish-migrate``) and never ran again: a
   migration that succeeded leaves the source in ``postmigrate`` until
   libvirt kills it.  The guest has no disk, NIC or balloon, so no device
   writes its RAM either.  The memfd therefore holds exactly the RAM the
   source had when it stopped, which is what the destination must hold;
3. the destination's memfd is opened the same way while it is paused, and
   both RAM blocks are compared byte for byte (page by page, with sha256
   of each, :func:`nova_dcmigrate.lab.ramcheck.compare_files`);
4. only then is the destination resumed, and its ``alive`` lines must
   keep coming on the shared serial log.

Both sides are read as raw RAM blocks (offset = ``ram_addr`` of
``pc.ram``), the unit migration transfers, so legacy VGA/ROM windows do not
get in the way as they would with ``pmemsave`` of the physical address
space.  A source dump of all zeros is refused, so a RAM block discarded on
exit could not pass as "identical".  Neither dump can be taken after the
guest could have changed memory: the source is dead, the destination never
ran.  Only guest RAM (``pc.ram``) is compared, not the small ROM blocks.

Checked on the lab: a busy guest (64 MiB dirtied at 40 MiB/s, 5
iterations) compares identical; the same comparison against a destination
that was allowed to run (no ``VIR_MIGRATE_PAUSED``) finds ~16,000
differing pages, so the check does see differences.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from pathlib import Path
import secrets
import threading
import time
from typing import Any
import uuid

import libvirt
from oslo_log import log as logging

from nova_dcmigrate.lab.agents import LabAgents
from nova_dcmigrate.lab import exception
from nova_dcmigrate.lab.libvirt_guest import LibvirtGuest
from nova_dcmigrate.lab.libvirt_host import LibvirtHost
from nova_dcmigrate.lab.qemu import MigrationResult
from nova_dcmigrate.lab.ramcheck import compare_files
from nova_dcmigrate.lab.ramcheck import RamComparison
from nova_dcmigrate.lab.topology import Lab
from nova_dcmigrate.virt import attempts

LOG = logging.getLogger(__name__)

#: Flags of every migration here (nova's live migration flags, P2P).
BASE_FLAGS = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER |
              libvirt.VIR_MIGRATE_PERSIST_DEST |
              libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)
#: Seconds between job statistics samples.
POLL_INTERVAL = 0.2
#: Seconds to wait for libvirt to have killed the source QEMU.
SOURCE_EXIT_TIMEOUT = 15.0

_STAT_KEYS = ("time_elapsed", "downtime", "setup_time", "data_total",
              "data_processed", "data_remaining", "memory_total",
              "memory_processed", "memory_remaining", "memory_constant",
              "memory_normal", "memory_normal_bytes", "memory_bps",
              "memory_iteration", "memory_dirty_rate")


@dataclasses.dataclass
class LibvirtMigration:
    """One libvirt migration attempt; see :func:`start_migration`."""

    guest: LibvirtGuest
    src: LibvirtHost
    dst: LibvirtHost
    uri: str
    params: dict[str, Any]
    flags: int
    #: Set for migrations through the agents.
    migration_id: str | None = None
    secret: str | None = None
    #: The agents' UNIX socket path (via agents), else None.
    socket: str | None = None
    agents: LabAgents | None = None
    #: (seconds since start, jobStats()) polled on the source.
    samples: list[tuple[float, dict[str, Any]]] = dataclasses.field(
        default_factory=list)
    #: Final job statistics (destination's completed stats, else the last
    #: sample).
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)
    wall_time_s: float | None = None
    error: libvirt.libvirtError | None = None
    ram: RamComparison | None = None
    #: Agents' ``get_status`` after the attempt.
    src_status: dict[str, Any] | None = None
    dst_status: dict[str, Any] | None = None
    #: Seconds from ``resume()`` of the destination to a new ``alive``.
    resume_to_alive_s: float | None = None
    _thread: threading.Thread | None = dataclasses.field(default=None,
                                                         repr=False)
    _src_ram_fd: int | None = dataclasses.field(default=None, repr=False)
    _started: float = dataclasses.field(default=0.0, repr=False)

    @property
    def src_host(self) -> str:
        return self.src.host

    @property
    def dst_host(self) -> str:
        return self.dst.host

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def downtime_ms(self) -> int | None:
        return self.stats.get("downtime")

    @property
    def time_elapsed_ms(self) -> int | None:
        return self.stats.get("time_elapsed")

    @property
    def data_total(self) -> int | None:
        return self.stats.get("data_total")

    @property
    def memory_processed(self) -> int | None:
        return self.stats.get("memory_processed")

    def summary(self) -> str:
        via = "agents" if self.migration_id else "direct"
        return (f"{self.guest.name} {self.src_host}->{self.dst_host} ({via}) "
                f"wall={self.wall_time_s or 0:.2f}s "
                f"elapsed={self.time_elapsed_ms}ms "
                f"downtime={self.downtime_ms}ms data_total="
                f"{self.data_total} memory_processed="
                f"{self.memory_processed} "
                f"iterations={self.stats.get('memory_iteration')}")

    def last_sample(self) -> dict[str, Any]:
        return self.samples[-1][1] if self.samples else {}

    def close(self) -> None:
        """Release the held source RAM block (:func:`verify_ram` does)."""
        _close_src_ram(self)


def migration_result(stats: dict[str, Any],
                     wall_time_s: float | None = None) -> MigrationResult:
    """libvirt's job statistics as a :class:`MigrationResult`.

    Why: the benchmark reports QMP and libvirt runs with one code path;
    libvirt's ``memory_*`` counters are QEMU's ``ram.*`` ones
    (``memory_processed`` = ``ram.transferred``, ``memory_iteration`` =
    ``dirty-sync-count``), its ``time_elapsed`` runs from the start of the
    job (libvirt's Begin phase) to completion.
    """
    completed = stats.get("type") == libvirt.VIR_DOMAIN_JOB_COMPLETED
    return MigrationResult(
        status="completed" if completed else "failed",
        total_time_ms=stats.get("time_elapsed"),
        downtime_ms=stats.get("downtime"),
        setup_time_ms=stats.get("setup_time"),
        transferred_bytes=int(stats.get("memory_processed", 0)),
        ram_total_bytes=int(stats.get("memory_total", 0)),
        normal_pages=int(stats.get("memory_normal", 0)),
        duplicate_pages=int(stats.get("memory_constant", 0)),
        dirty_sync_count=int(stats.get("memory_iteration", 0)),
        mbps=float(stats.get("memory_bps", 0)) * 8 / 1e6,
        cpu_throttle_percent=int(stats.get("auto_converge_throttle", 0)),
        wall_time_s=wall_time_s, raw=dict(stats))


def _slim(stats: dict[str, Any]) -> dict[str, Any]:
    keep = {k: v for k, v in stats.items() if k in _STAT_KEYS}
    keep["type"] = stats.get("type")
    return keep


def start_migration(guest: LibvirtGuest, dst: LibvirtHost, *,
                    uri: str | None = None,
                    listen_address: str | None = None,
                    bandwidth_mib: int | None = None,
                    extra_flags: int = 0, paused: bool = True,
                    verify_ram: bool = True) -> LibvirtMigration:
    """Start ``migrateToURI3`` of ``guest`` to ``dst`` in a thread.

    :param uri: ``VIR_MIGRATE_PARAM_URI``; default ``tcp://<dst address>``
        (libvirt allocates the port).
    :param listen_address: ``VIR_MIGRATE_PARAM_LISTEN_ADDRESS``.
    :param bandwidth_mib: ``VIR_MIGRATE_PARAM_BANDWIDTH`` in MiB/s
        (default: unlimited).
    :param paused: add ``VIR_MIGRATE_PAUSED`` (destination stays paused).
    :param verify_ram: hold the source RAM block for :func:`verify_ram`;
        needs ``paused``.
    :returns: at once; :func:`wait_migration` collects the outcome.
    """
    if verify_ram and not paused:
        raise exception.LabError(
            reason="verify_ram needs paused=True: a running destination "
                   "changes its RAM before it can be compared")
    src = guest.host
    params: dict[str, Any] = {
        libvirt.VIR_MIGRATE_PARAM_URI: uri or f"tcp://{dst.address}"}
    if listen_address:
        params[libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS] = listen_address
    if bandwidth_mib:
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = int(bandwidth_mib)
    flags = BASE_FLAGS | extra_flags
    if paused:
        flags |= libvirt.VIR_MIGRATE_PAUSED
    m = LibvirtMigration(guest=guest, src=src, dst=dst, uri=dst.uri,
                         params=params, flags=flags)
    guest.seen_on[dst.host] = dst
    if verify_ram:
        m._src_ram_fd = guest.open_ram(src)
    conn = src.open()
    try:
        dom = conn.lookupByUUIDString(guest.uuid)
    except BaseException:
        conn.close()
        _close_src_ram(m)
        raise

    def run() -> None:
        try:
            dom.migrateToURI3(dst.uri, params, flags)
        except libvirt.libvirtError as err:
            m.error = err
        finally:
            m.wall_time_s = time.monotonic() - m._started
            try:
                conn.close()
            except libvirt.libvirtError:
                pass

    LOG.info("libvirt migration of %s: %s -> %s, uri %s, params %s, "
             "flags %#x", guest.name, src.host, dst.host, dst.uri, params,
             flags)
    m._started = time.monotonic()
    m._thread = threading.Thread(target=run, daemon=True,
                                 name=f"migrate-{guest.name}")
    m._thread.start()
    return m


def _close_src_ram(m: LibvirtMigration) -> None:
    if m._src_ram_fd is not None:
        os.close(m._src_ram_fd)
        m._src_ram_fd = None


def wait_migration(m: LibvirtMigration, timeout: float = 300.0,
                   poll_interval: float = POLL_INTERVAL) -> LibvirtMigration:
    """Poll job statistics until the migration ends.

    On success the guest is recorded on the destination and
    :attr:`LibvirtMigration.stats` holds the completed statistics.

    :raises MigrationFailed: with libvirt's error (the guest stays on the
        source).
    :raises MigrationTimeout: if it is still running after ``timeout``
        seconds (the job is aborted first).
    """
    assert m._thread is not None
    deadline = m._started + timeout
    try:
        src_dom = m.src.conn.lookupByUUIDString(m.guest.uuid)
    except libvirt.libvirtError:
        src_dom = None
    try:
        while m._thread.is_alive():
            if src_dom is not None:
                try:
                    stats = src_dom.jobStats()
                    if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) != \
                            libvirt.VIR_DOMAIN_JOB_NONE:
                        m.samples.append((time.monotonic() - m._started,
                                          _slim(stats)))
                except libvirt.libvirtError:
                    pass        # the domain vanished at the end
            if time.monotonic() > deadline:
                last = m.last_sample()
                if src_dom is not None:
                    try:
                        src_dom.abortJob()
                    except libvirt.libvirtError as err:
                        LOG.warning("abortJob of %s: %s", m.guest.name, err)
                m._thread.join(60)
                raise exception.MigrationTimeout(
                    name=m.guest.name, status="active", timeout=timeout,
                    transferred=last.get("data_processed"),
                    remaining=last.get("data_remaining"))
            m._thread.join(poll_interval)
        if m.error is not None:
            LOG.warning("libvirt migration of %s %s -> %s failed after "
                        "%.2f s: %s", m.guest.name, m.src_host, m.dst_host,
                        m.wall_time_s or 0.0, m.error)
            raise exception.MigrationFailed(
                name=m.guest.name, status="failed",
                error=f"{m.error} (code {m.error.get_error_code()}, "
                      f"domain {m.error.get_error_domain()})") from m.error
        m.guest.moved_to(m.dst)
        try:
            m.stats = _slim(m.dst.conn.lookupByUUIDString(
                m.guest.uuid).jobStats(
                    libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED))
        except libvirt.libvirtError as err:
            LOG.warning("no completed job stats on %s: %s", m.dst_host, err)
        if not m.stats.get("time_elapsed"):
            m.stats = {**m.last_sample(), **m.stats}
        LOG.info("libvirt migration %s", m.summary())
        return m
    finally:
        if m.error is not None or m._thread.is_alive():
            _close_src_ram(m)


def verify_ram(m: LibvirtMigration) -> RamComparison:
    """Compare the source's final RAM with the paused destination's.

    See the module docstring.  Closes the source RAM descriptor.

    :raises RamCheckError: if the source QEMU still exists, the destination
        is not paused, or the source RAM is all zeros.
    """
    if m._src_ram_fd is None:
        raise exception.RamCheckError(
            src=m.src_host, dst=m.dst_host,
            reason="the source RAM was not held (verify_ram=False?)")
    try:
        m.ram = compare_moved_ram(m.guest, m.src, m._src_ram_fd, m.dst)
    finally:
        _close_src_ram(m)
    return m.ram


def compare_moved_ram(guest: LibvirtGuest, src: LibvirtHost, src_fd: int,
                      dst: LibvirtHost) -> RamComparison:
    """Compare the RAM block held through ``src_fd`` with ``dst``'s.

    The one comparison of every libvirt migration in the lab (whoever
    drove it: :func:`migrate_direct`, the redirect controller, the
    benchmark).  ``src_fd`` is the source QEMU's RAM block, opened with
    :meth:`LibvirtGuest.open_ram` before the migration; it is the caller's
    to close.  Waits until libvirt killed the source QEMU (so the block is
    final), then compares it with the paused destination's block byte for
    byte; the destination must stay paused throughout.

    :raises RamCheckError: if the source QEMU still exists, the destination
        is not paused, or the source RAM is all zeros.
    """
    started = time.monotonic()
    deadline = time.monotonic() + SOURCE_EXIT_TIMEOUT
    while (pid := src.qemu_pid(guest.name)) is not None:
        if time.monotonic() > deadline:
            raise exception.RamCheckError(
                src=src.host, dst=dst.host,
                reason=f"source QEMU pid {pid} still exists "
                       f"{SOURCE_EXIT_TIMEOUT:.0f} s after the migration")
        time.sleep(0.05)
    state, _reason = guest.state(dst)
    if state != libvirt.VIR_DOMAIN_PAUSED:
        raise exception.RamCheckError(
            src=src.host, dst=dst.host,
            reason=f"destination is {guest.state_name(dst)}, not paused")
    dst_fd = guest.open_ram(dst)
    try:
        result = compare_files(Path(f"/proc/self/fd/{src_fd}"),
                               Path(f"/proc/self/fd/{dst_fd}"),
                               guest.memory_bytes)
    finally:
        os.close(dst_fd)
    if result.sha256_src == _zero_sha256(result.size_bytes):
        raise exception.RamCheckError(
            src=src.host, dst=dst.host,
            reason="the source RAM block reads as all zeros")
    # The destination must still be paused: the dump is only meaningful
    # if nothing ran there while it was taken.
    if guest.state(dst)[0] != libvirt.VIR_DOMAIN_PAUSED:
        raise exception.RamCheckError(
            src=src.host, dst=dst.host,
            reason="destination left the paused state during the check")
    result = dataclasses.replace(result,
                                 elapsed_s=time.monotonic() - started)
    if result.identical:
        LOG.info("RAM of %s identical on %s and %s (%d MiB, sha256 %s, "
                 "%.2f s)", guest.name, src.host, dst.host,
                 result.size_bytes >> 20, result.sha256_src[:16],
                 result.elapsed_s)
    else:
        LOG.warning("RAM of %s differs between %s and %s: %d pages, first "
                    "at %#x", guest.name, src.host, dst.host,
                    result.differing_pages, result.first_difference or 0)
    return result


@functools.lru_cache(maxsize=4)
def _zero_sha256(size: int) -> str:
    digest = hashlib.sha256()
    chunk = bytes(4 * 1024 * 1024)
    for _ in range(size // len(chunk)):
        digest.update(chunk)
    digest.update(bytes(size % len(chunk)))
    return digest.hexdigest()


def resume_and_check(m: LibvirtMigration, timeout: float = 30.0) -> float:
    """Resume the paused destination and wait for a new ``alive`` line.

    :returns: seconds from ``resume()`` to that line.
    """
    lines = m.guest.alive_count()
    started = time.monotonic()
    m.guest.domain(m.dst).resume()
    m.guest.wait_alive(lines, timeout=timeout)
    m.resume_to_alive_s = time.monotonic() - started
    LOG.info("%s runs on %s (alive %.1f s after resume)", m.guest.name,
             m.dst_host, m.resume_to_alive_s)
    return m.resume_to_alive_s


def _finish(m: LibvirtMigration, verify: bool, resume: bool) -> None:
    if verify:
        verify_ram(m)
    if not resume:
        return
    if m.flags & libvirt.VIR_MIGRATE_PAUSED:
        resume_and_check(m)
    else:
        m.guest.wait_alive(m.guest.alive_count(), timeout=30)


def migrate_direct(guest: LibvirtGuest, dst: LibvirtHost, *,
                   timeout: float = 300.0, verify: bool = True,
                   resume: bool = True, **kwargs: Any) -> LibvirtMigration:
    """Direct P2P live migration (``URI = tcp://<dst address>``).

    With ``verify`` (default) the migration adds ``VIR_MIGRATE_PAUSED`` and
    the destination stays paused until its RAM was compared
    (:attr:`LibvirtMigration.ram`; a difference is reported, not raised).
    With ``resume`` (default) the destination is then resumed, and in any
    case must print a new ``alive`` line.  Other keyword arguments go to
    :func:`start_migration`.
    """
    kwargs.setdefault("paused", verify)
    m = start_migration(guest, dst, verify_ram=verify, **kwargs)
    wait_migration(m, timeout)
    _finish(m, verify, resume)
    return m


def start_via_agents(lab: Lab, agents: LabAgents, guest: LibvirtGuest,
                     dst: LibvirtHost, *, migration_id: str | None = None,
                     secret: str | None = None,
                     **kwargs: Any) -> LibvirtMigration:
    """Prepare both agents over RPC and start the libvirt migration.

    The migration stream goes source QEMU -> source libvirtd's connection
    to the UNIX socket P -> source agent -> destination agent ->
    destination QEMU listening on P on its host.  Returns at once.
    """
    assert agents.api is not None
    mid = migration_id or str(uuid.uuid4())
    secret = secret or secrets.token_hex(32)
    src_host = guest.host.host
    path = attempts.prepare_agents(
        agents.api, mid, secret, 0, src_host, dst.host,
        lab.hosts[dst.host].address, agents.peer_port, [], True, None,
        tls=agents.tls)
    LOG.info("Agent migration %s of %s: %s -> %s via agents, socket %s",
             mid, guest.name, src_host, dst.host, path)
    try:
        m = start_migration(guest, dst, uri="unix://" + path, **kwargs)
    except BaseException:
        for host in (src_host, dst.host):
            try:
                agents.api.abort(host, mid, "libvirt migration not started")
            except Exception as err:  # noqa: BLE001 - best effort
                LOG.warning("abort %s on %s: %s", mid, host, err)
        raise
    m.migration_id, m.secret, m.socket, m.agents = mid, secret, path, agents
    return m


def migrate_via_agents(lab: Lab, agents: LabAgents, guest: LibvirtGuest,
                       dst: LibvirtHost, *, timeout: float = 300.0,
                       verify: bool = True, resume: bool = True,
                       **kwargs: Any) -> LibvirtMigration:
    """:func:`migrate_direct` through the agents; the agents' final status
    is attached (also when the migration failed)."""
    kwargs.setdefault("paused", verify)
    m = start_via_agents(lab, agents, guest, dst, verify_ram=verify,
                         **kwargs)
    try:
        wait_migration(m, timeout)
    finally:
        collect_agent_status(m)
    _finish(m, verify, resume)
    return m


def collect_agent_status(m: LibvirtMigration, wait: float = 10.0) -> None:
    """Fetch both agents' view of the attempt (waiting for final states).

    A dead agent's status is left ``None``.
    """
    if m.agents is None or m.agents.api is None or m.migration_id is None:
        return
    api = m.agents.api
    deadline = time.monotonic() + wait
    while True:
        for attr, host in (("src_status", m.src_host),
                           ("dst_status", m.dst_host)):
            try:
                # Short RPC timeout: a killed agent must not stall this.
                setattr(m, attr, api.client.prepare(
                    server=host, timeout=3).call(
                        {}, "get_status", migration_id=m.migration_id))
            except Exception as err:  # noqa: BLE001 - best effort
                LOG.debug("no agent status of %s from %s: %s",
                          m.migration_id, host, err)
        states = [a["state"] for st in (m.src_status, m.dst_status)
                  if st for a in st["attempts"]]
        if all(s in ("completed", "failed", "aborted") for s in states) \
                or time.monotonic() > deadline:
            return
        time.sleep(0.1)
