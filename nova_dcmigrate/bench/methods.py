"""The four ways of getting the guest to its final host.

``dcmigrate``  :class:`RedirectableMigration` (split on): start towards the
               first destination through the agents, redirect on schedule;
               earlier destinations relay what they hold.
``relay-only`` the same with the optimised split off: the source drops
               every page a holder has, the holders relay all of them.
``restart``    plain QEMU-to-QEMU migration; a redirect is
               ``migrate_cancel`` and a fresh migration to the next host
               (what Nova users do today: abort, migrate again).
``direct``     one plain QEMU-to-QEMU migration to the final host.

All are driven by :func:`drive`: one polling loop that fires redirects
from a :class:`RedirectSchedule`, feeds the progress display and stops
at completion or on timeout.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

from oslo_log import log as logging

from nova_dcmigrate.bench import counters as ctr
from nova_dcmigrate.lab.agents import LabAgents
from nova_dcmigrate.lab.direct import UNLIMITED_BANDWIDTH
from nova_dcmigrate.lab.qemu import MigrationResult
from nova_dcmigrate.lab.qemu import QemuGuest
from nova_dcmigrate.lab.redirect import RedirectableMigration
from nova_dcmigrate.lab.redirect import RedirectRefused
from nova_dcmigrate.lab.topology import Lab

LOG = logging.getLogger(__name__)

POLL_S = 0.05
_FINAL = ("completed", "failed", "cancelled")


class BenchError(Exception):
    """A run could not be completed."""


@dataclasses.dataclass
class RedirectEvent:
    #: Monotonic time of the redirect (just before the cancel).
    at: float
    fraction: float
    from_host: str
    to_host: str
    #: QEMU's ram.transferred of the attempt that was redirected.
    transferred: int


@dataclasses.dataclass
class AttemptInfo:
    number: int
    dst_host: str
    holders: list[str]
    started: float
    ended: float | None = None
    outcome: str = "running"
    #: QEMU's ram.transferred when the attempt ended (source side).
    qemu_transferred: int = 0


@dataclasses.dataclass
class MigrationRun:
    """Everything one method's migration produced."""

    method: str
    started: float = 0.0
    completed: float | None = None
    redirects: list[RedirectEvent] = dataclasses.field(default_factory=list)
    #: Fractions whose redirect did not happen (migration done first, or
    #: the source refused).
    skipped: list[float] = dataclasses.field(default_factory=list)
    attempts: list[AttemptInfo] = dataclasses.field(default_factory=list)
    result: MigrationResult | None = None
    dst_guest: QemuGuest | None = None
    agent_status: dict[str, Any] | None = None
    #: Per agent host: peak memory during the run (bench.agent_memory).
    agent_memory: dict[str, Any] | None = None
    #: Agents' counters of every attempt after the first redirect (every
    #: attempt when there was no redirect).
    counters: list[ctr.AttemptCounters] = dataclasses.field(
        default_factory=list)
    #: (monotonic time, host, QEMU migration status) at every change seen
    #: by the polling loop.  (QMP blocks while the guest is paused for the
    #: switchover, so the downtime is taken from QEMU's own counters.)
    status_changes: list[tuple[float, str, str]] = dataclasses.field(
        default_factory=list)

    @property
    def first_redirect(self) -> float | None:
        return self.redirects[0].at if self.redirects else None

    @property
    def last_redirect(self) -> float | None:
        return self.redirects[-1].at if self.redirects else None


class RedirectSchedule:
    """When to redirect, and where to.

    The first redirect fires when the first attempt's ``ram.transferred``
    reaches ``fractions[0] * first_pass_bytes``.  A later fraction ``F``
    fires at ``t_start + (t_first - t_start) * F / fractions[0]``: the
    moment the first attempt would have reached ``F`` at the rate it had
    (the first attempt no longer exists then, and a method that finishes
    earlier should not be redirected later for it).
    """

    def __init__(self, fractions: tuple[float, ...], route: tuple[str, ...],
                 first_pass_bytes: int) -> None:
        if len(route) != len(fractions) + 1:
            raise ValueError("route needs one host more than fractions")
        self.fractions = fractions
        self.route = route
        self.first_pass_bytes = max(1, first_pass_bytes)
        self.done = 0
        self.t_start: float | None = None
        self.t_first: float | None = None

    @property
    def remaining(self) -> int:
        return len(self.fractions) - self.done

    def start(self, now: float) -> None:
        self.t_start = now

    def fraction_of(self, transferred: int) -> float:
        return transferred / self.first_pass_bytes

    def due(self, now: float, transferred: int) -> bool:
        """Whether the next redirect should fire now."""
        if self.done >= len(self.fractions) or self.t_start is None:
            return False
        if self.done == 0:
            return transferred >= self.fractions[0] * self.first_pass_bytes
        assert self.t_first is not None
        elapsed = (self.t_first - self.t_start) * \
            self.fractions[self.done] / self.fractions[0]
        return now >= self.t_start + elapsed

    def next_host(self) -> str:
        return self.route[self.done + 1]

    def fired(self, now: float) -> None:
        if self.done == 0:
            self.t_first = now
        self.done += 1

    def skip_rest(self) -> list[float]:
        rest = list(self.fractions[self.done:])
        self.done = len(self.fractions)
        return rest


# -- drivers -----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Poll:
    """The current attempt as the source sees it (QMP or libvirt)."""

    #: In QEMU's words: ``active`` while RAM moves, then ``completed``,
    #: ``failed`` or ``cancelled`` (other words: setup, switchover).
    status: str
    #: RAM bytes the source sent in this attempt (QEMU's
    #: ``ram.transferred``, libvirt's ``memory_processed``).
    transferred: int
    #: RAM bytes the source still has to send (its current estimate).
    remaining: int


class Driver:
    """One method's primitives; :func:`drive` sequences them."""

    def __init__(self, lab: Lab, src: Any, run: MigrationRun,
                 downtime_ms: int) -> None:
        self.lab = lab
        self.src = src
        self.run = run
        self.downtime_ms = downtime_ms

    def poll(self) -> Poll:
        """The current attempt's state (called every :data:`POLL_S`)."""
        raise NotImplementedError

    def start(self, host: str) -> None:
        raise NotImplementedError

    def redirect(self, host: str) -> bool:
        """Change destination; False if it was too late."""
        raise NotImplementedError

    def finish(self, timeout: float) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        """Best-effort stop after an error (no exceptions)."""

    def collect(self) -> None:
        """Fetch the agents' counters into the run (agent methods)."""

    def cleanup(self) -> None:
        """Drop what the migration left on the agents (no exceptions)."""

    def current_host(self) -> str:
        return self.run.attempts[-1].dst_host


class _QmpDriver(Driver):
    """A driver whose source is a :class:`QemuGuest` driven over QMP."""

    src: QemuGuest

    def poll(self) -> Poll:
        info = self.src.query_migrate()
        ram = info.get("ram", {})
        return Poll(str(info.get("status")), int(ram.get("transferred", 0)),
                    int(ram.get("remaining", 0)))


class DirectDriver(_QmpDriver):
    """Plain QEMU-to-QEMU migrations; a redirect cancels and restarts."""

    def __init__(self, lab: Lab, src: QemuGuest, run: MigrationRun,
                 downtime_ms: int) -> None:
        super().__init__(lab, src, run, downtime_ms)
        self.dst: QemuGuest | None = None

    def start(self, host: str) -> None:
        self.src.set_migration_params(**{
            "max-bandwidth": UNLIMITED_BANDWIDTH,
            "downtime-limit": self.downtime_ms})
        dst = QemuGuest.start(
            self.lab, host, self.src.image, memory_mib=self.src.memory_mib,
            dirty_mib=self.src.dirty_mib, dirty_rate=self.src.dirty_rate,
            incoming="defer")
        try:
            port = self.lab.free_port(host)
            uri = "tcp:%s:%d" % (self.lab.hosts[host].address, port)
            dst.migrate_incoming(uri)
            self.run.attempts.append(AttemptInfo(
                number=len(self.run.attempts), dst_host=host, holders=[],
                started=time.monotonic()))
            self.src.migrate(uri)
        except BaseException:
            dst.stop()
            raise
        self.dst = dst

    def _cancel(self) -> str:
        self.src.migrate_cancel()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = str(self.src.query_migrate().get("status"))
            if status in _FINAL:
                return status
            time.sleep(0.02)
        raise BenchError("the source did not stop migrating after "
                         "migrate_cancel")

    def redirect(self, host: str) -> bool:
        att = self.run.attempts[-1]
        info = self.src.query_migrate()
        transferred = int(info.get("ram", {}).get("transferred", 0))
        status = self._cancel()
        if status == "completed":
            return False
        after = self.src.query_migrate().get("ram", {})
        att.qemu_transferred = int(after.get("transferred", transferred))
        att.ended = time.monotonic()
        att.outcome = "redirected"
        if self.dst is not None:
            self.dst.stop()
            self.dst = None
        self.start(host)
        return True

    def finish(self, timeout: float) -> None:
        assert self.dst is not None
        result = self.src.wait_migration(timeout)
        att = self.run.attempts[-1]
        att.outcome = "completed"
        att.qemu_transferred = result.transferred_bytes
        att.ended = att.started + (result.total_time_ms or 0) / 1000.0
        self.dst.wait_status({"paused", "postmigrate"}, timeout=60)
        self.run.result = result
        self.run.dst_guest = self.dst
        self.run.completed = att.ended if result.total_time_ms else \
            time.monotonic()

    def abort(self) -> None:
        try:
            if self.src.query_migrate().get("status") not in _FINAL:
                self._cancel()
        except Exception as err:  # noqa: BLE001 - best effort
            LOG.warning("cancelling the migration failed: %s", err)
        if self.dst is not None:
            self.dst.stop()
            self.dst = None


class AgentDriver(_QmpDriver):
    """Through the dcmigrate agents (:class:`RedirectableMigration`)."""

    def __init__(self, lab: Lab, src: QemuGuest, run: MigrationRun,
                 downtime_ms: int, agents: LabAgents, split: bool) -> None:
        super().__init__(lab, src, run, downtime_ms)
        self.m = RedirectableMigration(lab, agents, src, split=split,
                                       downtime_ms=downtime_ms)

    def start(self, host: str) -> None:
        a = self.m.start(host)
        self.run.attempts.append(AttemptInfo(
            number=a.number, dst_host=host, holders=list(a.holders),
            started=a.started))

    def redirect(self, host: str) -> bool:
        att = self.run.attempts[-1]
        info = self.src.query_migrate()
        transferred = int(info.get("ram", {}).get("transferred", 0))
        try:
            a = self.m.redirect(host)
        except RedirectRefused as err:
            LOG.info("redirect to %s refused: %s", host, err)
            return False
        att.qemu_transferred = transferred
        att.ended = self.m.attempts[a.number - 1].ended
        att.outcome = "redirected"
        self.run.attempts.append(AttemptInfo(
            number=a.number, dst_host=host, holders=list(a.holders),
            started=a.started))
        return True

    def finish(self, timeout: float) -> None:
        result = self.m.wait(timeout)
        # Retries (a holder lost) add attempts the loop did not see.
        known = {a.number for a in self.run.attempts}
        for a in self.m.attempts:
            if a.number not in known:
                self.run.attempts.append(AttemptInfo(
                    number=a.number, dst_host=a.dst_host,
                    holders=list(a.holders), started=a.started))
        for info, a in zip(self.run.attempts, self.m.attempts):
            info.outcome = a.outcome
            if a.ended is not None:
                info.ended = a.ended
        last = self.run.attempts[-1]
        last.qemu_transferred = result.transferred_bytes
        if result.total_time_ms:
            last.ended = last.started + result.total_time_ms / 1000.0
        self.run.result = result
        self.run.dst_guest = self.m.current.dst_guest
        self.run.completed = last.ended or time.monotonic()
        self.collect()

    def collect(self) -> None:
        status = self.m.status()
        self.run.agent_status = status
        first = 1 if self.run.redirects else 0
        self.run.counters = [
            ctr.attempt_counters(status, self.src.host, a.number,
                                 a.dst_host, a.holders)
            for a in self.m.attempts if a.number >= first]

    def abort(self) -> None:
        try:
            if self.src.query_migrate().get("status") not in _FINAL:
                self.src.migrate_cancel()
        except Exception as err:  # noqa: BLE001 - best effort
            LOG.warning("cancelling the migration failed: %s", err)
        for a in self.m.attempts:
            a.dst_guest.stop()

    def cleanup(self) -> None:
        self.m.cleanup()


def make_driver(method: str, lab: Lab, src: QemuGuest, run: MigrationRun,
                downtime_ms: int, agents: LabAgents | None) -> Driver:
    if method in ("dcmigrate", "relay-only"):
        if agents is None:
            raise BenchError("%s needs the lab agents" % method)
        return AgentDriver(lab, src, run, downtime_ms, agents,
                           split=(method == "dcmigrate"))
    if method in ("restart", "direct"):
        return DirectDriver(lab, src, run, downtime_ms)
    raise BenchError("unknown method %s" % method)


#: Called every poll: (host of the current attempt, its :class:`Poll`,
#: first-pass fraction of the current attempt).
Observer = Callable[[str, Poll, float], None]


def drive(method: str, driver: Driver, schedule: RedirectSchedule,
          timeout_s: float, observe: Observer | None = None) -> MigrationRun:
    """Run one migration to completion, redirecting on schedule.

    ``direct`` ignores the schedule and goes to its last host at once.

    :raises BenchError: on timeout (the migration is cancelled first).
    :raises LabError: when QEMU or an agent fails.
    """
    run = driver.run
    route = schedule.route if method != "direct" else schedule.route[-1:]
    redirecting = method != "direct"
    try:
        run.started = time.monotonic()
        schedule.start(run.started)
        driver.start(route[0])
        deadline = run.started + timeout_s
        while True:
            poll = driver.poll()
            status = poll.status
            now = time.monotonic()
            host = driver.current_host()
            if not run.status_changes or \
                    run.status_changes[-1][1:] != (host, status):
                run.status_changes.append((now, host, status))
            if status in _FINAL:
                break
            transferred = poll.transferred
            if observe is not None:
                observe(driver.current_host(), poll,
                        schedule.fraction_of(transferred))
            if redirecting and status == "active" and \
                    schedule.due(now, transferred):
                fraction = schedule.fractions[schedule.done]
                target = schedule.next_host()
                from_host = driver.current_host()
                at = time.monotonic()
                if driver.redirect(target):
                    schedule.fired(at)
                    run.redirects.append(RedirectEvent(
                        at=at, fraction=fraction, from_host=from_host,
                        to_host=target, transferred=transferred))
                    LOG.info("%s: redirected %s -> %s at %.2f of a first "
                             "pass", method, from_host, target, fraction)
                else:
                    run.skipped.extend(schedule.skip_rest())
            if now > deadline:
                raise BenchError("%s: migration not done after %.0f s"
                                 % (method, timeout_s))
            time.sleep(POLL_S)
        if redirecting and schedule.remaining:
            run.skipped.extend(schedule.skip_rest())
        driver.finish(max(5.0, deadline - time.monotonic()))
    except BaseException:
        driver.abort()
        raise
    return run
