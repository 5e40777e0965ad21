"""Redirectable live migration through stock libvirt (no Nova needed).

Every attempt is a libvirt peer-to-peer live migration (``migrateToURI3``
with ``VIR_MIGRATE_PARAM_URI = unix://<socket_dir>/<migration>.<n>/
migration.sock``, libvirt >= 6.8): the destination QEMU binds that path
on its host, in a directory only the QEMU user can enter; the source
libvirtd connects to the same path on the source host, where the source
agent listens in a root-only directory; the dcmigrate agents carry the
stream between them.  Both agents are prepared over RPC first (they create
the directories and return the path).  No local TCP port is opened, so no
other local process can reach either end.

A redirect aborts the running job (``abortJob``: libvirt keeps the guest
running on the source and kills the old destination QEMU, whose agent
keeps the pages it stored), then starts a new attempt listing every
earlier destination as a holder.  Switchover is held back with a 1 ms
maximum downtime until the new destination has every relayed page, then
the configured downtime is restored (not 0: QEMU 10 treats a zero limit
as "switch over now" at the end of a pass).

Nothing here imports Nova: the Nova driver builds on this class.
"""

from __future__ import annotations

import dataclasses
import enum
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import libvirt
from oslo_log import log as logging

from nova_dcmigrate.exception import DcmigrateError
from nova_dcmigrate.exception import MigrationStateError
from nova_dcmigrate.virt import attempts
from nova_dcmigrate.virt.libvirt import flags as migration_flags

LOG = logging.getLogger(__name__)

#: Maximum downtime (ms) that holds switchover back while relays run.
GATE_DOWNTIME_MS = 1

BASE_FLAGS = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER |
              libvirt.VIR_MIGRATE_PERSIST_DEST |
              libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)

#: Flags whose stream the agents cannot carry, with the reason.
UNSUPPORTED_FLAGS = migration_flags.UNSUPPORTED_FLAGS


class ControllerError(DcmigrateError):
    msg_fmt = "Migration %(migration_id)s: %(reason)s"


class UnsupportedMigrationFlags(ControllerError):
    msg_fmt = "Migration flags not supported by dcmigrate: %(flags)s"


class UnsupportedDisksUri(ControllerError):
    msg_fmt = ("Migration %(migration_id)s: disks URI %(uri)s is not "
               "supported: %(reason)s")


class RedirectRefused(ControllerError):
    msg_fmt = "Cannot redirect migration %(migration_id)s: %(reason)s"


class MigrationFailed(ControllerError):
    msg_fmt = "Migration %(migration_id)s failed: %(reason)s"


class State(enum.Enum):
    NEW = "new"
    RUNNING = "running"          # an attempt is migrating
    REDIRECTING = "redirecting"  # aborting one attempt for the next
    COMPLETED = "completed"
    FAILED = "failed"            # guest still runs on the source
    ABORTED = "aborted"          # user abort; guest runs on the source


@dataclasses.dataclass(frozen=True)
class HostInfo:
    """How to reach a compute host's libvirtd and dcmigrate agent."""

    name: str               # agent RPC server name (the compute host)
    libvirt_uri: str        # e.g. qemu+tcp://10.0.0.2/system
    agent_address: str      # address of the agent's peer listener
    agent_port: int
    #: Expected upload rate in bytes/s, if known (a hint for the first
    #: split between the source and the holders).
    upload_rate: float | None = None


@dataclasses.dataclass
class Attempt:
    number: int
    host: HostInfo
    #: The attempt's UNIX socket path (the same on both hosts).
    socket: str
    holders: list[str]
    thread: threading.Thread | None = None
    error: libvirt.libvirtError | None = None
    started: float = 0.0
    ended: float | None = None
    outcome: str = "running"
    source_rate: float = 0.0


@dataclasses.dataclass(frozen=True)
class Prepared:
    """The agents of the next attempt, prepared before the running
    attempt is stopped (:meth:`RedirectableMigration.redirect`)."""

    number: int
    host: HostInfo
    holders: list[str]
    socket: str


@dataclasses.dataclass
class MigrationStatus:
    """One view of a migration: libvirt's job plus the agents' counters."""

    migration_id: str
    state: str
    attempt: int
    destination: str | None
    holders: list[str]
    bytes_from_source: int          # source agent onto its link, all attempts
    bytes_relayed: dict[str, int]   # per holder, current attempt
    pages_deduplicated: int         # pages the source did not resend
    memory_remaining: int | None    # libvirt's view of the current attempt
    job: dict[str, Any]


def check_flags(flags: int) -> None:
    """:raises UnsupportedMigrationFlags: for flags the agents can't carry."""
    bad = migration_flags.unsupported(flags, libvirt)
    if bad:
        raise UnsupportedMigrationFlags(flags=migration_flags.describe(bad))


class RedirectableMigration:
    """Live-migrate one libvirt domain; redirect it while it runs.

    :param dom: the domain on the source libvirtd.
    :param source: the source host.
    :param agents: an ``AgentAPI`` (oslo.messaging client of the agents).
    :param resolve: host name -> :class:`HostInfo`.
    :param extra_flags: added to LIVE|PEER2PEER|PERSIST_DEST|UNDEFINE_SOURCE
        (e.g. ``VIR_MIGRATE_PAUSED``); unsupported ones are refused.
    :param max_downtime_ms: downtime allowed at switchover.
    :param tls: the agents' links must use TLS (agents whose
        ``[dcmigrate_agent] peer_tls`` is off refuse the attempt).
    """

    def __init__(self, dom: libvirt.virDomain, source: HostInfo,
                 agents: Any, resolve: Callable[[str], HostInfo], *,
                 extra_flags: int = 0, max_downtime_ms: int = 300,
                 params: dict[str, Any] | None = None, split: bool = True,
                 max_retries: int = 3,
                 migration_id: str | None = None,
                 tls: bool = False) -> None:
        self.flags = BASE_FLAGS | extra_flags
        check_flags(self.flags)
        self.dom = dom
        self.source = source
        self.agents = agents
        self.resolve = resolve
        self.max_downtime_ms = max_downtime_ms
        self.params = dict(params or {})
        self.split = split
        self.max_retries = max_retries
        self.tls = tls
        self.migration_id = migration_id or str(uuid.uuid4())
        self._check_disks()
        self.secret = secrets.token_hex(32)
        self.state = State.NEW
        self.attempts: list[Attempt] = []
        self.dead_holders: set[str] = set()
        # Bytes/s the source's link really moved (0: not measured yet).
        self.source_link_rate = 0.0
        self.error: str | None = None
        self._lock = threading.RLock()
        self._done = threading.Event()

    # -- helpers -------------------------------------------------------------
    @property
    def current(self) -> Attempt:
        return self.attempts[-1]

    def _require(self, *states: State, operation: str) -> None:
        if self.state not in states:
            raise MigrationStateError(
                migration_id=self.migration_id, state=self.state.value,
                operation=operation,
                required="/".join(s.value for s in states))

    def holders_for(self, host: str) -> list[str]:
        """Earlier destinations still alive, newest first (not ``host``)."""
        return attempts.holders_for((a.host.name for a in self.attempts),
                                    host, self.dead_holders)

    # -- attempts ----------------------------------------------------------
    def _prepare_agents(self, info: HostInfo) -> Prepared:
        """Prepare the agents of the next attempt to ``info``.

        :raises: whatever the agents raised (nothing is left prepared).
        """
        number = len(self.attempts)
        holders = self.holders_for(info.name)
        specs = []
        for h in holders:
            hi = self.resolve(h)
            spec: dict[str, Any] = {"host": hi.name,
                                    "address": hi.agent_address,
                                    "port": hi.agent_port}
            if hi.upload_rate:
                spec["rate"] = float(hi.upload_rate)
            specs.append(spec)
        path = attempts.prepare_agents(
            self.agents, self.migration_id, self.secret, number,
            self.source.name, info.name, info.agent_address,
            info.agent_port, specs, self.split,
            self.source_link_rate or self.source.upload_rate,
            tls=self.tls, guest_memory=self._guest_memory())
        return Prepared(number, info, holders, path)

    def _prepare_ahead(self, info: HostInfo) -> Prepared | None:
        """Prepare the next attempt while the current one still runs.

        Why: the new destination's agent is known to be ready before the
        running attempt is given up (if it is not, the migration goes on
        to the current destination), and its preparation is off the
        critical path of the switch.  Only when the running attempt's
        sessions can be aborted alone (agent RPC 1.4) and the new host is
        not the current destination (its prepare would supersede the
        running session there).

        :raises RedirectRefused: the new destination's agents refused;
            the current attempt goes on unchanged.
        """
        if (info.name == self.current.host.name or
                not attempts.can_prepare_ahead(self.agents)):
            return None
        try:
            return self._prepare_agents(info)
        except Exception as err:
            self._forget_host(info.name)
            LOG.warning("migration %(mid)s: the new destination %(h)s is "
                        "not ready; the migration goes on to %(cur)s: "
                        "%(err)s", {"mid": self.migration_id,
                                    "h": info.name,
                                    "cur": self.current.host.name,
                                    "err": err})
            raise RedirectRefused(
                migration_id=self.migration_id,
                reason="the agents of %s could not be prepared (%s); the "
                       "migration goes on to %s"
                       % (info.name, err, self.current.host.name)
            ) from err

    def _drop_prepared(self, prepared: Prepared | None) -> None:
        """Undo :meth:`_prepare_ahead` (the redirect did not happen)."""
        if prepared is None:
            return
        attempts.abort_agents(self.agents, self.migration_id,
                              [self.source.name, prepared.host.name],
                              attempt=prepared.number)
        self._forget_host(prepared.host.name)

    def _forget_host(self, host: str) -> None:
        """Drop the migration on ``host`` unless an attempt went there
        (then it holds pages for later attempts)."""
        if host in {a.host.name for a in self.attempts}:
            return
        try:
            self.agents.cleanup(host, self.migration_id)
        except Exception as err:  # noqa: BLE001 - agent may be gone
            LOG.warning("migration %(mid)s: cleanup on %(h)s: %(err)s",
                        {"mid": self.migration_id, "h": host, "err": err})

    def start(self, host: str,
              prepared: Prepared | None = None) -> Attempt:
        """Start migrating to ``host`` (returns once libvirt has the job).

        :param prepared: the agents, when :meth:`redirect` prepared them
            before stopping the previous attempt.
        """
        with self._lock:
            self._require(State.NEW, State.REDIRECTING,
                          operation="start an attempt")
            info = self.resolve(host)
            if info.name == self.source.name:
                raise RedirectRefused(migration_id=self.migration_id,
                                      reason="the destination is the source")
            number = len(self.attempts)
            if (prepared is not None and prepared.number == number and
                    prepared.host.name == info.name):
                holders, path = prepared.holders, prepared.socket
            else:
                ready = self._prepare_agents(info)
                holders, path = ready.holders, ready.socket
            gate = bool(holders)
            self.dom.migrateSetMaxDowntime(GATE_DOWNTIME_MS if gate else
                                           self.max_downtime_ms)
            attempt = Attempt(number, info, path, holders,
                              started=time.monotonic())
            self.attempts.append(attempt)
            params = dict(self.params)
            # No listen address: libvirt forbids it with a unix URI.
            params.pop(libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS, None)
            params[libvirt.VIR_MIGRATE_PARAM_URI] = "unix://" + path
            self._disk_params(params, info)
            if gate and self.source_link_rate > 0:
                # The source drops held pages at local speed: QEMU's own
                # estimate would see a far faster link than the real one.
                params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH_AVAIL_SWITCHOVER] \
                    = attempts.avail_switchover_mib(self.source_link_rate)
            attempt.thread = threading.Thread(
                target=self._run_attempt, args=(attempt, params),
                name="migrate-%s-%d" % (self.migration_id[:8], number),
                daemon=True)
            self.state = State.RUNNING
            self._done.clear()
            attempt.thread.start()
            LOG.info("migration %(mid)s attempt %(n)d: %(src)s -> %(dst)s "
                     "(socket %(path)s, holders %(holders)s)",
                     {"mid": self.migration_id, "n": number,
                      "src": self.source.name, "dst": info.name,
                      "path": path, "holders": holders or "none"})
        if gate:
            threading.Thread(target=self._ungate_when_relayed,
                             args=(attempt,), daemon=True).start()
        return attempt

    def _check_disks(self) -> None:
        """A block migration's disks go in libvirt's NBD stream straight
        to the destination (``disks_uri = tcp://<destination>``): the
        agents relay only the memory stream.

        :raises UnsupportedDisksUri: a ``unix://`` (or other non-tcp)
            disks URI, which nothing would relay between the hosts, or a
            block migration with ``tls`` (the disks would cross in clear).
        """
        uri = self.params.get(libvirt.VIR_MIGRATE_PARAM_DISKS_URI)
        if uri is not None and not str(uri).startswith("tcp://"):
            raise UnsupportedDisksUri(
                migration_id=self.migration_id, uri=uri,
                reason="the dcmigrate agents do not relay libvirt's NBD "
                       "disk stream; leave it unset (tcp://<destination>)")
        if self.tls and migration_flags.is_block_migration(self.flags,
                                                           libvirt):
            raise UnsupportedDisksUri(
                migration_id=self.migration_id,
                uri=uri or "tcp://<destination>",
                reason="the disks bypass the agents' TLS and would cross "
                       "the network in clear")

    def _disk_params(self, params: dict[str, Any], info: HostInfo) -> None:
        """libvirt wants an explicit NBD URI with a unix migrate URI."""
        if migration_flags.is_block_migration(self.flags, libvirt) and \
                libvirt.VIR_MIGRATE_PARAM_DISKS_URI not in params:
            params[libvirt.VIR_MIGRATE_PARAM_DISKS_URI] = \
                "tcp://%s" % info.agent_address

    def _guest_memory(self) -> int | None:
        """The domain's memory (bytes): the destination agent refuses a
        stream announcing more RAM than that allows."""
        try:
            return int(self.dom.maxMemory()) * 1024
        except libvirt.libvirtError as err:
            LOG.warning("migration %(mid)s: cannot read the domain's "
                        "memory, RAM blocks are not bounded: %(err)s",
                        {"mid": self.migration_id, "err": err})
            return None

    def _run_attempt(self, attempt: Attempt, params: dict[str, Any]) -> None:
        try:
            self.dom.migrateToURI3(attempt.host.libvirt_uri, params,
                                   self.flags)
            attempt.outcome = "completed"
        except libvirt.libvirtError as err:
            attempt.error = err
            if attempt.outcome == "running":
                attempt.outcome = "failed"
        finally:
            attempt.ended = time.monotonic()
            self._done.set()

    def _ungate_when_relayed(self, attempt: Attempt) -> None:
        done = attempts.wait_relayed(
            self.agents, attempt.host.name, self.migration_id,
            attempt.number, lambda: attempt.outcome == "running")
        attempt.source_rate = done.source_rate
        self._restore_downtime(attempt)

    def _restore_downtime(self, attempt: Attempt) -> None:
        with self._lock:
            if attempt is not self.current or attempt.outcome != "running":
                return
            try:
                self.dom.migrateSetMaxDowntime(self.max_downtime_ms)
            except libvirt.libvirtError as err:
                LOG.warning("migration %(mid)s: cannot restore max downtime:"
                            " %(err)s", {"mid": self.migration_id,
                                         "err": err})

    # -- operations --------------------------------------------------------
    def _cancel_current(self, why: str) -> None:
        """abortJob and wait until libvirt finished the attempt.

        :raises RedirectRefused: the attempt completed first.
        """
        attempt = self.current
        self._note_link_rate(attempt)
        attempt.outcome = why
        try:
            self.dom.abortJob()
        except libvirt.libvirtError as err:
            LOG.info("migration %(mid)s: abortJob: %(err)s",
                     {"mid": self.migration_id, "err": err})
        assert attempt.thread is not None
        attempt.thread.join(120)
        if attempt.thread.is_alive():
            raise ControllerError(migration_id=self.migration_id,
                                  reason="libvirt did not end the job")
        if attempt.error is None:
            attempt.outcome = "completed"
            self.state = State.COMPLETED
            raise RedirectRefused(
                migration_id=self.migration_id,
                reason="the migration completed before it could be "
                       "cancelled")
        self._abort_agents([self.source.name, attempt.host.name],
                           attempt.number)

    def _note_link_rate(self, attempt: Attempt) -> None:
        """Remember the rate the source link really moved (bytes/s)."""
        rate = attempts.measured_link_rate(bool(attempt.holders),
                                           attempt.source_rate,
                                           self.dom.jobStats)
        if rate:
            self.source_link_rate = rate

    def _abort_agents(self, hosts: list[str],
                      attempt: int | None = None) -> None:
        attempts.abort_agents(self.agents, self.migration_id, hosts,
                              attempt=attempt)

    def _check_redirectable(self) -> None:
        self._require(State.RUNNING, operation="redirect")
        state, reason = self.dom.state()
        if state == libvirt.VIR_DOMAIN_PAUSED and reason in (
                libvirt.VIR_DOMAIN_PAUSED_MIGRATION,
                getattr(libvirt, "VIR_DOMAIN_PAUSED_POSTCOPY", -1),
                getattr(libvirt, "VIR_DOMAIN_PAUSED_STARTING_UP", -1)):
            raise RedirectRefused(
                migration_id=self.migration_id,
                reason="the guest is already stopped for switchover")
        if self.current.outcome != "running":
            raise RedirectRefused(migration_id=self.migration_id,
                                  reason="the current attempt ended")

    def _current_failed(self) -> bool:
        """The current attempt ended without completing (e.g. the old
        destination's QEMU died); the guest still runs on the source."""
        a = self.current
        return (a.thread is not None and not a.thread.is_alive() and
                a.outcome == "failed")

    def redirect(self, host: str) -> Attempt:
        """Change the destination of the migration to ``host``.

        Also after the current attempt failed (its destination QEMU died,
        say): the agents of earlier destinations still hold their pages,
        so the new attempt reuses them as for any redirect.

        :raises RedirectRefused: nothing changed (switchover already
            started, migration completed, bad target).
        """
        prepared: Prepared | None = None
        with self._lock:
            info = self.resolve(host)
            if info.name == self.source.name:
                raise RedirectRefused(migration_id=self.migration_id,
                                      reason="the new host is the source")
            if info.name == self.current.host.name:
                raise RedirectRefused(
                    migration_id=self.migration_id,
                    reason="%s is already the destination" % info.name)
            if self.state in (State.RUNNING, State.FAILED) and \
                    self._current_failed():
                if not self.dom.isActive():
                    raise RedirectRefused(
                        migration_id=self.migration_id,
                        reason="the guest no longer runs on the source")
                self.state = State.REDIRECTING
                self._abort_agents([self.source.name,
                                    self.current.host.name])
            else:
                self._check_redirectable()
                # The new destination first, while the guest still
                # migrates to the old one (see _prepare_ahead).
                prepared = self._prepare_ahead(info)
                self.state = State.REDIRECTING
                try:
                    self._cancel_current("redirected")
                except RedirectRefused:
                    self._drop_prepared(prepared)
                    raise
                except Exception:
                    self._drop_prepared(prepared)
                    self.state = State.FAILED
                    raise
        LOG.info("migration %(mid)s: redirected to %(h)s%(pre)s",
                 {"mid": self.migration_id, "h": info.name,
                  "pre": " (agents prepared before the abort)"
                  if prepared else ""})
        return self.start(info.name, prepared)

    def resume(self) -> Attempt:
        """Start the current attempt again to the same host; its agent
        reuses what it stored, only the rest is sent."""
        with self._lock:
            host = self.current.host.name
            if self.state == State.RUNNING:
                self.state = State.REDIRECTING
                self._cancel_current("resumed")
            elif self.state == State.FAILED:
                self.state = State.REDIRECTING
        return self.start(host)

    def abort(self) -> None:
        """User abort: the guest keeps running on the source, and nothing
        of the migration is left on any destination."""
        with self._lock:
            if self.state in (State.COMPLETED, State.ABORTED):
                return
            if self.state == State.RUNNING:
                try:
                    self._cancel_current("aborted")
                except RedirectRefused:
                    raise
            self.state = State.ABORTED
            self.cleanup()

    def cleanup(self) -> None:
        """Drop the migration's sessions and page stores on every host."""
        hosts = {self.source.name} | {a.host.name for a in self.attempts}
        for host in hosts:
            try:
                self.agents.cleanup(host, self.migration_id)
            except Exception as err:  # noqa: BLE001 - agent may be gone
                LOG.warning("migration %(mid)s: cleanup on %(h)s: %(err)s",
                            {"mid": self.migration_id, "h": host,
                             "err": err})

    def wait(self, timeout: float = 3600) -> Attempt:
        """Wait for completion, retrying without holders that died.

        :raises MigrationFailed: the guest still runs on the source.
        """
        deadline = time.monotonic() + timeout
        while True:
            attempt = self.current
            assert attempt.thread is not None
            attempt.thread.join(max(0.0, deadline - time.monotonic()))
            if attempt.thread.is_alive():
                raise ControllerError(migration_id=self.migration_id,
                                      reason="timed out")
            with self._lock:
                if attempt is not self.current:
                    continue            # redirected meanwhile
                if attempt.outcome == "completed":
                    self.state = State.COMPLETED
                    return attempt
                if self.state is State.ABORTED:
                    raise MigrationFailed(migration_id=self.migration_id,
                                          reason="aborted")
                # Another thread (e.g. a TriggerWatch) is redirecting: its
                # attempt is about to start.
                redirecting = self.state is State.REDIRECTING
            if redirecting:
                if time.monotonic() > deadline:
                    raise ControllerError(migration_id=self.migration_id,
                                          reason="timed out in a redirect")
                time.sleep(0.05)
                continue
            with self._lock:
                if (attempt is not self.current or
                        self.state in (State.REDIRECTING, State.ABORTED)):
                    continue            # changed while unlocked
                dead = self._failed_holders(attempt)
                retries = sum(1 for a in self.attempts
                              if a.outcome == "failed")
                if not dead or retries > self.max_retries:
                    self.state = State.FAILED
                    self.error = str(attempt.error)
                    self._abort_agents([self.source.name,
                                        attempt.host.name])
                    raise MigrationFailed(migration_id=self.migration_id,
                                          reason=self.error)
                self.dead_holders |= dead
                LOG.warning("migration %(mid)s attempt %(n)d lost holders "
                            "%(dead)s; retrying",
                            {"mid": self.migration_id, "n": attempt.number,
                             "dead": sorted(dead)})
                self._abort_agents([self.source.name, attempt.host.name])
                self.state = State.REDIRECTING
            self.start(attempt.host.name)

    def _failed_holders(self, attempt: Attempt) -> set[str]:
        return attempts.failed_holders(self.agents, attempt.host.name,
                                       self.migration_id, attempt.number,
                                       attempt.holders)

    def agent_status(self) -> dict[str, Any]:
        """Every involved agent's ``get_status`` of this migration, by
        host (an unreachable agent: ``{"error": ...}``)."""
        out: dict[str, Any] = {}
        for host in [self.source.name] + sorted(
                {a.host.name for a in self.attempts}):
            try:
                out[host] = self.agents.get_status(host, self.migration_id)
            except Exception as err:  # noqa: BLE001 - reported
                out[host] = {"error": str(err)}
        return out

    def status(self) -> MigrationStatus:
        job: dict[str, Any] = {}
        try:
            job = self.dom.jobStats()
        except libvirt.libvirtError:
            pass
        from_source = dedup = 0
        relayed: dict[str, int] = {}
        if self.attempts:
            try:
                src = self.agents.get_status(self.source.name,
                                             self.migration_id)
                for a in src.get("attempts", []):
                    c = a["counters"]
                    from_source += c.get("bytes_sent", c["stream_bytes"])
                    dedup += c.get("pages_dropped", 0)
            except Exception:  # noqa: BLE001
                pass
            try:
                dst = self.agents.get_status(self.current.host.name,
                                             self.migration_id)
                for a in dst.get("attempts", []):
                    if a["attempt"] == self.current.number:
                        for h, v in a.get("redirect", {}).get(
                                "holders", {}).items():
                            relayed[h] = v["bytes"]
            except Exception:  # noqa: BLE001
                pass
        return MigrationStatus(
            migration_id=self.migration_id, state=self.state.value,
            attempt=self.current.number if self.attempts else -1,
            destination=self.current.host.name if self.attempts else None,
            holders=self.current.holders if self.attempts else [],
            bytes_from_source=from_source, bytes_relayed=relayed,
            pages_deduplicated=dedup,
            memory_remaining=job.get("memory_remaining"), job=job)
