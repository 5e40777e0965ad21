"""The four methods through libvirt (``dcmigrate-bench --via libvirt``).

The guest is a libvirt domain on the lab host ``src``'s libvirtd
(:mod:`nova_dcmigrate.lab.libvirt_guest`), every destination a lab host
with its own libvirtd, and every migration a libvirt peer-to-peer live
migration (``migrateToURI3``) with ``VIR_MIGRATE_PAUSED``, so the
destination stays paused until the runner compared its RAM:

``dcmigrate``  the libvirt controller
               (:class:`nova_dcmigrate.virt.libvirt.controller.
               RedirectableMigration`), split on: a redirect is
               ``abortJob`` and a new attempt listing the earlier
               destinations as holders.
``relay-only`` the same with the optimised split off (``split=False`` to
               the destination agent, as on the QMP path).
``restart``    what a Nova user does today, on hosts that run the agents:
               ``abortJob`` (the controller's abort: the guest stays on
               the source, the old destination's QEMU and every agent
               session and page store of the migration are dropped), then
               a new migration with a new id through the agents from
               scratch to the new host.
``direct``     one plain libvirt migration to the final host
               (``VIR_MIGRATE_PARAM_URI = tcp://<destination>``), no
               agents: the reference.

Progress comes from the source domain's ``jobStats``:
``memory_processed`` (QEMU's ``ram.transferred``) and
``memory_remaining``.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import libvirt
from oslo_log import log as logging

from nova_dcmigrate.bench import counters as ctr
from nova_dcmigrate.bench.methods import Driver
from nova_dcmigrate.bench.methods import AttemptInfo
from nova_dcmigrate.bench.methods import BenchError
from nova_dcmigrate.bench.methods import MigrationRun
from nova_dcmigrate.bench.methods import Poll
from nova_dcmigrate.lab.agents import LabAgents
from nova_dcmigrate.lab import libvirt_migration as lm
from nova_dcmigrate.lab.libvirt_guest import LibvirtGuest
from nova_dcmigrate.lab.libvirt_host import LibvirtHost
from nova_dcmigrate.lab.ramcheck import RamComparison
from nova_dcmigrate.lab.topology import Lab
from nova_dcmigrate.virt.libvirt import controller as ctl

LOG = logging.getLogger(__name__)

#: Methods that need the agents on this path (restart goes through them).
AGENT_METHODS = frozenset({"dcmigrate", "relay-only", "restart"})
SOURCE = "src"


class _LibvirtDriver(Driver):
    """Common parts: the source domain, its job statistics, the result."""

    src: LibvirtGuest

    def __init__(self, lab: Lab, guest: LibvirtGuest,
                 hosts: dict[str, LibvirtHost], run: MigrationRun,
                 downtime_ms: int, extra_flags: int) -> None:
        super().__init__(lab, guest, run, downtime_ms)
        self.hosts = hosts
        self.extra_flags = libvirt.VIR_MIGRATE_PAUSED | extra_flags
        # A connection of our own: migrateToURI3 blocks its caller for the
        # whole migration, the polling loop reads jobStats meanwhile.
        self.conn = hosts[SOURCE].open()
        self.dom = self.conn.lookupByUUIDString(guest.uuid)
        self._last: tuple[int, Poll] | None = None

    def _job(self) -> dict[str, Any]:
        try:
            return dict(self.dom.jobStats())
        except libvirt.libvirtError as err:
            LOG.debug("jobStats: %s", err)
            return {}

    def _poll(self, running: bool, completed: bool) -> Poll:
        if not running:
            return Poll("completed" if completed else "failed", 0, 0)
        job = self._job()
        key = len(self.run.attempts)
        if "memory_processed" in job:
            self._last = (key, Poll("active", int(job["memory_processed"]),
                                    int(job.get("memory_remaining", 0))))
        elif self._last is not None and self._last[0] == key:
            # Between libvirt's phases (and once the domain left) there
            # are no statistics; the attempt's last ones still hold.
            return self._last[1]
        else:
            return Poll("active", 0, 0)
        return self._last[1]

    def _completed_stats(self, host: str) -> dict[str, Any]:
        """The destination's completed job statistics (libvirt sends the
        source's in the migration cookie; reading them discards them)."""
        try:
            stats = dict(self.hosts[host].conn.lookupByUUIDString(
                self.src.uuid).jobStats(
                    libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED))
        except libvirt.libvirtError as err:
            raise BenchError("no completed job statistics on %s: %s"
                             % (host, err)) from err
        if stats.get("type") != libvirt.VIR_DOMAIN_JOB_COMPLETED:
            raise BenchError("no completed job statistics on %s: %r"
                             % (host, stats))
        return stats

    def _complete(self, stats: dict[str, Any], ended: float | None) -> None:
        """Record the final attempt's result from its completed job
        statistics."""
        att = self.run.attempts[-1]
        wall = (ended - att.started) if ended is not None else None
        result = lm.migration_result(stats, wall)
        att.outcome = "completed"
        att.qemu_transferred = result.transferred_bytes
        if result.total_time_ms:
            att.ended = att.started + result.total_time_ms / 1000.0
        else:
            att.ended = ended or time.monotonic()
        self.run.result = result
        self.run.completed = att.ended

    def cleanup(self) -> None:
        try:
            self.conn.close()
        except libvirt.libvirtError:
            pass


class ControllerDriver(_LibvirtDriver):
    """``dcmigrate``, ``relay-only`` (redirects) and ``restart`` (a fresh
    migration per destination) through the libvirt controller."""

    def __init__(self, lab: Lab, guest: LibvirtGuest,
                 hosts: dict[str, LibvirtHost], run: MigrationRun,
                 downtime_ms: int, extra_flags: int, agents: LabAgents, *,
                 split: bool = True, restart: bool = False) -> None:
        super().__init__(lab, guest, hosts, run, downtime_ms, extra_flags)
        self.agents = agents
        self.split = split
        self.restart = restart
        self.migrations: list[ctl.RedirectableMigration] = []

    @property
    def m(self) -> ctl.RedirectableMigration:
        return self.migrations[-1]

    def info(self, name: str) -> ctl.HostInfo:
        up = self.lab.rates(name)[0]
        return ctl.HostInfo(name, self.hosts[name].uri,
                            self.lab.hosts[name].address,
                            self.agents.peer_port,
                            None if up is None else up / 8.0)

    def _new_migration(self) -> ctl.RedirectableMigration:
        m = ctl.RedirectableMigration(
            self.dom, self.info(SOURCE), self.agents.api, self.info,
            extra_flags=self.extra_flags, max_downtime_ms=self.downtime_ms,
            split=self.split)
        self.migrations.append(m)
        return m

    def _record(self, a: ctl.Attempt) -> None:
        self.run.attempts.append(AttemptInfo(
            number=len(self.run.attempts), dst_host=a.host.name,
            holders=list(a.holders), started=a.started))

    def start(self, host: str) -> None:
        self._record(self._new_migration().start(host))

    def poll(self) -> Poll:
        a = self.m.current
        running = a.thread is not None and a.thread.is_alive()
        return self._poll(running, a.outcome == "completed")

    def redirect(self, host: str) -> bool:
        att = self.run.attempts[-1]
        transferred = int(self._job().get("memory_processed", 0))
        old = self.m.current
        try:
            if self.restart:
                self.m.abort()
                new = self._new_migration().start(host)
            else:
                new = self.m.redirect(host)
        except ctl.RedirectRefused as err:
            LOG.info("redirect to %s refused: %s", host, err)
            return False
        att.qemu_transferred = transferred
        att.ended = old.ended
        att.outcome = "redirected"
        self._record(new)
        return True

    def finish(self, timeout: float) -> None:
        a = self.m.wait(timeout)
        # Retries (a holder lost) add attempts the loop did not see.
        known = {(i.dst_host, i.started) for i in self.run.attempts}
        for extra in self.m.attempts:
            if (extra.host.name, extra.started) not in known:
                self._record(extra)
        self._complete(self._completed_stats(a.host.name), a.ended)
        self.collect()

    def collect(self) -> None:
        m = self.m
        status = m.agent_status()
        self.run.agent_status = status
        if self.restart:
            return
        first = 1 if self.run.redirects else 0
        self.run.counters = [
            ctr.attempt_counters(status, SOURCE, a.number, a.host.name,
                                 a.holders)
            for a in m.attempts if a.number >= first]

    def abort(self) -> None:
        for m in self.migrations:
            try:
                m.abort()
            except Exception as err:  # noqa: BLE001 - best effort
                LOG.warning("aborting migration %s failed: %s",
                            m.migration_id, err)

    def cleanup(self) -> None:
        for m in self.migrations:
            m.cleanup()
        super().cleanup()


class PlainDriver(_LibvirtDriver):
    """``direct``: one plain libvirt migration, no agents."""

    def __init__(self, lab: Lab, guest: LibvirtGuest,
                 hosts: dict[str, LibvirtHost], run: MigrationRun,
                 downtime_ms: int, extra_flags: int) -> None:
        super().__init__(lab, guest, hosts, run, downtime_ms, extra_flags)
        self.m: lm.LibvirtMigration | None = None

    def start(self, host: str) -> None:
        self.dom.migrateSetMaxDowntime(self.downtime_ms)
        self.run.attempts.append(AttemptInfo(
            number=len(self.run.attempts), dst_host=host, holders=[],
            started=time.monotonic()))
        # The runner holds the source RAM itself (verify_ram=False).
        self.m = lm.start_migration(self.src, self.hosts[host],
                                    extra_flags=self.extra_flags,
                                    paused=True, verify_ram=False)

    def poll(self) -> Poll:
        assert self.m is not None
        return self._poll(self.m.running, self.m.error is None)

    def redirect(self, host: str) -> bool:
        raise BenchError("direct migrations are not redirected")

    def finish(self, timeout: float) -> None:
        assert self.m is not None
        # wait_migration read (and so discarded) the completed statistics.
        lm.wait_migration(self.m, timeout)
        self._complete(self.m.stats, self.run.attempts[-1].started +
                       (self.m.wall_time_s or 0.0))

    def abort(self) -> None:
        if self.m is None or not self.m.running:
            return
        try:
            self.dom.abortJob()
        except libvirt.libvirtError as err:
            LOG.warning("abortJob: %s", err)
        thread: threading.Thread | None = self.m._thread
        if thread is not None:
            thread.join(60)


def make_driver(method: str, lab: Lab, guest: LibvirtGuest,
                hosts: dict[str, LibvirtHost], run: MigrationRun,
                downtime_ms: int, agents: LabAgents | None,
                auto_converge: bool = False) -> Driver:
    """The driver of ``method`` on the libvirt path."""
    flags = libvirt.VIR_MIGRATE_AUTO_CONVERGE if auto_converge else 0
    if method == "direct":
        return PlainDriver(lab, guest, hosts, run, downtime_ms, flags)
    if method not in AGENT_METHODS:
        raise BenchError("unknown method %s" % method)
    if agents is None:
        raise BenchError("%s needs the lab agents" % method)
    return ControllerDriver(lab, guest, hosts, run, downtime_ms, flags,
                            agents, split=(method == "dcmigrate"),
                            restart=(method == "restart"))


class LibvirtSide:
    """``--via libvirt``: the guest is a libvirt domain on ``src``'s
    libvirtd; the runner's hooks for it.

    The source RAM block is opened (through the domain's memfd) before
    the migration starts and compared with the paused final destination's
    after it (:func:`nova_dcmigrate.lab.libvirt_migration.
    compare_moved_ram`), then the destination is resumed.
    """

    def __init__(self, cfg: Any, lab: Lab, image: Any,
                 hosts: dict[str, LibvirtHost]) -> None:
        self.cfg = cfg
        self.lab = lab
        self.image = image
        self.hosts = hosts
        self.guest: LibvirtGuest | None = None
        self.src_ram: int | None = None

    def boot(self) -> None:
        cfg = self.cfg
        self.guest = LibvirtGuest.start(
            self.hosts[SOURCE], self.image, memory_mib=cfg.memory_mib,
            dirty_mib=cfg.dirty_mib, dirty_rate=cfg.dirty_rate)
        self.guest.wait_booted(cfg.boot_timeout_s)

    def read_ram(self) -> bytes:
        assert self.guest is not None
        fd = self.guest.open_ram()
        try:
            size = self.guest.memory_bytes
            chunks = []
            offset = 0
            while offset < size:
                chunk = os.pread(fd, min(4 << 20, size - offset), offset)
                if not chunk:
                    break
                chunks.append(chunk)
                offset += len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def driver(self, method: str, run: MigrationRun,
               agents: LabAgents | None) -> Driver:
        assert self.guest is not None
        self.src_ram = self.guest.open_ram(self.hosts[SOURCE])
        return make_driver(method, self.lab, self.guest, self.hosts, run,
                           self.cfg.downtime_ms, agents,
                           self.cfg.auto_converge)

    def _final(self, run: MigrationRun) -> LibvirtHost:
        return self.hosts[run.attempts[-1].dst_host]

    def verify(self, run: MigrationRun) -> RamComparison:
        assert self.guest is not None and self.src_ram is not None
        return lm.compare_moved_ram(self.guest, self.hosts[SOURCE],
                                    self.src_ram, self._final(run))

    def resume(self, run: MigrationRun) -> None:
        assert self.guest is not None
        final = self._final(run)
        self.guest.moved_to(final)
        lines = self.guest.alive_count()
        self.guest.domain(final).resume()
        self.guest.wait_alive(lines, timeout=30)

    def close(self, run: MigrationRun) -> None:
        if self.src_ram is not None:
            os.close(self.src_ram)
            self.src_ram = None
        if self.guest is not None:
            # The domain may be defined on any host it was sent to.
            self.guest.seen_on.update(self.hosts)
            self.guest.destroy()
