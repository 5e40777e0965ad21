"""How one live-migration attempt's libvirt job runs and is stopped.

``DCMigrateLibvirtDriver`` runs a live migration as a sequence of
attempts, one per destination; everything Nova-side (monitor, redirect
orchestration, post/rollback) is the same whatever carries the memory.
The libvirt calls that differ sit behind :class:`MigrationTransport`:

* :class:`DirectLibvirtTransport` -- Nova's stock job: ``migrateToURI3``
  from the source libvirtd straight to the destination (Nova's own
  ``_live_migration_operation``), and ``abortJob`` to stop it. A redirect
  then restarts the memory copy from scratch on the new destination.
  This is what runs today, and what Nova's functional harness exercises:
  there fakelibvirt replaces libvirt, its ``migrateToURI3`` is a test stub
  and its ``abortJob`` does nothing unless the test patches it, so no
  memory moves and no page is kept -- only Nova's side is real.
* :class:`AgentTransport` -- the same Nova job, but QEMU's stream goes
  through the dcmigrate agents of the source and destination hosts
  (``migrate_uri = unix://<socket_dir>/<migration>.<n>/migration.sock``:
  the destination QEMU binds it in a directory only the QEMU user can
  enter, the source libvirtd connects to the source agent there, in a
  root-only directory; no listen address, libvirt forbids it with a unix
  URI; ``disks_uri = tcp://<destination address>`` for a block
  migration, which libvirt requires with a unix URI), and a stopped
  attempt's destination agent keeps its pages: the next
  attempt lists every earlier destination as a holder, which relays what
  it holds instead of the source resending it. Per attempt it does what
  ``nova_dcmigrate.virt.libvirt.controller.RedirectableMigration.start``
  does (that controller keeps its own real-libvirt tests in
  ``tests/functional/libvirt``), but the libvirt call is Nova's.

Choices made for the agent transport
------------------------------------

* One dcmigrate migration per Nova live migration: the agents' migration
  id is the Nova migration's uuid and one random secret is kept for all
  attempts; the state is keyed by instance uuid (Nova runs one live
  migration per instance at a time) and dropped, after ``cleanup`` on
  every agent involved, when the driver ends the migration.
* Agent addresses: ``[dcmigrate_compute] agent_addresses`` if it names the
  host, else the destination's ``[libvirt] live_migration_inbound_addr``
  (``migrate_data.target_connect_addr``, the address Nova itself uses to
  reach that host for migrations), else the host name resolved by DNS. The
  port is the one the agent reports (``ping`` -> ``peer_port``), recorded
  per destination so that it can later be listed as a holder.
* Agent RPC: a separate oslo.messaging transport
  (``nova_dcmigrate.rpc.get_transport``, URL ``[dcmigrate_compute]
  agent_transport_url`` or ``[DEFAULT] transport_url``), not Nova's
  ``nova.rpc.TRANSPORT``: the agents' exceptions must come back as
  ``nova_dcmigrate`` exceptions (Nova's transport only rebuilds Nova's),
  e.g. ``SecretMismatch`` or ``TLSConfigError``. It is created on
  first use, so a driver that never migrates opens no connection.
* ``[libvirt] live_migration_with_native_tls``: the agents carry the
  stream over mutual TLS 1.3 instead (``[dcmigrate_agent] peer_tls`` must
  be on for every agent involved, else the prepare is refused); QEMU's own
  TLS is not asked for (``VIR_MIGRATE_TLS`` is dropped from the flags: the
  agents must parse the stream). Without it, a WARNING is logged once that
  guest memory crosses the network unencrypted.
* Flags the agents cannot carry (:mod:`.flags`) are refused, not run
  directly: the driver refuses them at ``check_can_live_migrate_source``
  (nothing claimed yet, the instance stays ACTIVE on the source) and this
  transport again before any agent is prepared. Falling back to the
  direct job would silently make redirects resend everything.
* Seam for tests: ``AgentTransport(agents=...)`` (or the ``agents``
  attribute, or :func:`default_agents`) takes any object with
  ``AgentAPI``'s methods; Nova's functional tests pass in-process
  ``AgentManager`` instances through a small adapter.
* Agent presence: :meth:`AgentTransport.ping` with a short timeout
  (``agent_ping_timeout``) decides whether the driver reports the placement
  trait ``CUSTOM_DCMIGRATE_AGENT`` for its own host, and
  :meth:`AgentTransport.check_destination` refuses a redirect to a host
  whose agent does not answer, before the running attempt is stopped.
"""

from __future__ import annotations

import abc
import concurrent.futures
import copy
import dataclasses
import secrets
import socket
import threading
import uuid
from typing import Any

from oslo_log import log as logging
from oslo_utils import netutils

import nova_dcmigrate.conf
from nova_dcmigrate.exception import DcmigrateError
from nova_dcmigrate.virt import attempts
from nova_dcmigrate.virt.libvirt import flags as migration_flags

LOG = logging.getLogger(__name__)
CONF = nova_dcmigrate.conf.CONF

#: Maximum downtime (ms) that holds switchover back while holders relay.
GATE_DOWNTIME_MS = 1
#: Threads waiting for relays (one per gated attempt at a time; Nova runs
#: max_concurrent_live_migrations at once, more wait their turn).
GATE_WORKERS = 16
#: libvirt's VIR_MIGRATE_PARAM_* values (fakelibvirt lacks some of them).
PARAM_URI = "migrate_uri"
PARAM_LISTEN_ADDRESS = "listen_address"
PARAM_DISKS_URI = "disks_uri"
PARAM_BANDWIDTH_AVAIL_SWITCHOVER = "bandwidth.avail.switchover"


def _nova_libvirt_driver() -> Any:
    # Imported when used: the agent transport's own logic is testable
    # where nova is not installed.
    from nova.virt.libvirt import driver as libvirt_driver
    return libvirt_driver


class AgentTransportError(DcmigrateError):
    msg_fmt = "Live migration through the dcmigrate agents: %(reason)s"


class AgentUnreachable(AgentTransportError):
    msg_fmt = ("Live migration through the dcmigrate agents: no dcmigrate "
               "agent answers for host %(host)s: %(reason)s")


class UnsupportedByAgents(AgentTransportError):
    msg_fmt = ("Migration flags not supported by the dcmigrate agents: "
               "%(flags)s. Disable them ([libvirt] "
               "live_migration_permit_post_copy, "
               "live_migration_parallel_connections, "
               "live_migration_tunnelled) or "
               "set [dcmigrate_compute] transport = direct.")


class MigrationTransport(metaclass=abc.ABCMeta):
    """Runs and stops the libvirt job of one migration attempt."""

    @abc.abstractmethod
    def run_attempt(self, driver: Any, context: Any, instance: Any,
                    dest: str, block_migration: Any, migrate_data: Any,
                    guest: Any, device_names: list[str]) -> None:
        """Run the job to ``dest`` until it ends (a worker thread).

        Arguments are those of ``LibvirtDriver._live_migration_operation``.

        :raises Exception: when the job fails or is stopped; Nova's
            monitor learns the outcome from the job statistics.
        """

    @abc.abstractmethod
    def stop_attempt(self, guest: Any) -> None:
        """Stop the running job so that another attempt can start.

        The guest keeps running on the source.

        :raises libvirt.libvirtError: if libvirt refuses (e.g. the job
            already ended).
        """

    def unsupported_flags(self, flags: int, lv: Any) -> list[str]:
        """Names of the migration flags this transport cannot carry."""
        return []

    def configure_downtime(self, guest: Any, downtime_ms: int) -> None:
        """Nova's monitor raising the allowed downtime (a step)."""
        guest.migrate_configure_max_downtime(downtime_ms)

    def end_migration(self, instance_uuid: str) -> None:
        """The live migration ended (completed or rolled back)."""

    def check_destination(self, host: str) -> None:
        """Check that ``host`` can take an attempt, before a redirect
        stops the running one (nothing to check by default).

        :raises Exception: ``host`` cannot take it.
        """

    def prepare_next(self, instance: Any, dest: str,
                     migrate_data: Any) -> None:
        """Prepare the next attempt to ``dest`` while the running one
        still runs (nothing to prepare by default).

        :raises Exception: ``dest`` cannot take it; the running attempt
            is untouched.
        """

    def drop_prepared(self, instance_uuid: str) -> None:
        """Undo :meth:`prepare_next` (the redirect did not happen)."""


class DirectLibvirtTransport(MigrationTransport):
    """Nova's stock libvirt job, straight to the destination."""

    def run_attempt(self, driver: Any, context: Any, instance: Any,
                    dest: str, block_migration: Any, migrate_data: Any,
                    guest: Any, device_names: list[str]) -> None:
        # The stock implementation, not the driver's override (which
        # delegates here).
        _nova_libvirt_driver().LibvirtDriver._live_migration_operation(
            driver, context, instance, dest, block_migration, migrate_data,
            guest, device_names)

    def stop_attempt(self, guest: Any) -> None:
        guest.abort_job()


def default_agents() -> Any:
    """The agents' RPC client of an ``AgentTransport`` given none.

    An ``AgentAPI`` on its own oslo.messaging transport (``[dcmigrate_compute]
    agent_transport_url``, ``agent_rpc_timeout``). Nova's functional tests
    replace this function to hand in-process agents to every driver.
    """
    from nova_dcmigrate.agent import rpcapi
    from nova_dcmigrate import rpc
    group = CONF.dcmigrate_compute
    return rpcapi.AgentAPI(
        rpc.get_transport(CONF, url=group.agent_transport_url),
        timeout=group.agent_rpc_timeout)


def migration_flags_for(driver: Any, instance: Any, block_migration: bool,
                        lv: Any) -> int:
    """The flags Nova's ``_live_migration_operation`` will pass.

    Same choice as the stock code: block or live flags, minus POSTCOPY for
    a paused guest (Nova unsets it there).
    """
    flags = int(driver._block_migration_flags if block_migration
                else driver._live_migration_flags)
    postcopy = getattr(lv, "VIR_MIGRATE_POSTCOPY", 0)
    if getattr(instance, "vm_state", None) == "paused" and flags & postcopy:
        flags &= ~postcopy
    return flags


@dataclasses.dataclass(frozen=True)
class AgentEndpoint:
    """Where one host's agent accepts agent-to-agent connections."""

    host: str
    address: str
    port: int


@dataclasses.dataclass
class AgentAttempt:
    """One attempt as the agents see it."""

    number: int
    dest: AgentEndpoint
    #: The attempt's UNIX socket path (the same on both hosts).
    socket: str
    holders: list[str]
    #: Bytes/s the source link moved, measured by the destination agent.
    source_rate: float = 0.0
    #: Set when the attempt's job ended (wakes the relay wait at once).
    ended: threading.Event = dataclasses.field(
        default_factory=threading.Event)

    @property
    def running(self) -> bool:
        return not self.ended.is_set()

    @running.setter
    def running(self, value: bool) -> None:
        if value:
            self.ended.clear()
        else:
            self.ended.set()


@dataclasses.dataclass
class AgentMigration:
    """The agents' side of one Nova live migration (all its attempts)."""

    migration_id: str
    secret: str
    source: str
    attempts: list[AgentAttempt] = dataclasses.field(default_factory=list)
    endpoints: dict[str, AgentEndpoint] = dataclasses.field(
        default_factory=dict)
    #: Holding the switchover back (1 ms) while holders relay.
    gated: bool = False
    #: The downtime Nova's monitor last asked for (applied when ungated).
    wanted_downtime: int | None = None
    #: Bytes/s the source's link really moved (0: not measured yet).
    link_rate: float = 0.0
    #: The flavor's memory (bytes); bounds the RAM a stream may announce.
    guest_memory: int | None = None
    #: Agent links must use TLS (live_migration_with_native_tls).
    tls: bool = False
    #: The next attempt, prepared before the running one is stopped.
    ahead: AgentAttempt | None = None
    lock: threading.RLock = dataclasses.field(default_factory=threading.RLock)

    @property
    def hosts(self) -> set[str]:
        """Every host whose agent took part."""
        return {self.source} | set(self.endpoints)


class _AgentDomain:
    """The guest's domain, with ``migrateToURI3`` aimed at the agents.

    Nova's ``Guest.migrate`` builds the parameters (destination XML,
    persistent XML, disks, bandwidth); only the stream's URI and the
    destination's listen address change, plus the switchover bandwidth
    hint while relays run. Everything else is the real domain.
    """

    def __init__(self, domain: Any, transport: AgentTransport,
                 migration: AgentMigration, attempt: AgentAttempt,
                 lv: Any) -> None:
        self._dcm_domain = domain
        self._dcm_transport = transport
        self._dcm_migration = migration
        self._dcm_attempt = attempt
        self._dcm_lv = lv

    def migrateToURI3(self, dconnuri: str, params: dict[str, Any],
                      flags: int) -> Any:
        bad = migration_flags.unsupported_with_tls(flags, self._dcm_lv)
        flags = without_tls(flags, self._dcm_lv)
        bad += migration_flags.unsupported(flags, self._dcm_lv)
        if bad:
            raise UnsupportedByAgents(flags=migration_flags.describe(bad))
        params = dict(params)
        params[PARAM_URI] = "unix://" + self._dcm_attempt.socket
        params.pop(PARAM_LISTEN_ADDRESS, None)
        if params.get("migrate_disks") and PARAM_DISKS_URI not in params:
            # libvirt wants an explicit NBD URI with a unix migrate URI;
            # disks go straight to the destination, as with a direct job.
            params[PARAM_DISKS_URI] = \
                "tcp://%s" % self._dcm_attempt.dest.address
        mig = self._dcm_migration
        if self._dcm_attempt.holders and mig.link_rate > 0:
            # The source drops held pages at local speed: QEMU's own
            # estimate would see a far faster link than the real one.
            params[PARAM_BANDWIDTH_AVAIL_SWITCHOVER] = \
                attempts.avail_switchover_mib(mig.link_rate)
        return self._dcm_domain.migrateToURI3(dconnuri, params=params,
                                              flags=flags)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dcm_domain, name)


class AgentTransport(MigrationTransport):
    """Each attempt's stream goes through the dcmigrate agents.

    :param agents: an ``AgentAPI`` or any object with its methods (the test
        seam); None: an ``AgentAPI`` on its own oslo.messaging transport,
        created on first use.
    """

    def __init__(self, agents: Any = None) -> None:
        self._agents = agents
        self._lock = threading.Lock()
        self._gates: concurrent.futures.ThreadPoolExecutor | None = None
        #: Running migrations by instance uuid.
        self.migrations: dict[str, AgentMigration] = {}

    @property
    def agents(self) -> Any:
        with self._lock:
            if self._agents is None:
                self._agents = default_agents()
            return self._agents

    @agents.setter
    def agents(self, agents: Any) -> None:
        with self._lock:
            self._agents = agents

    def unsupported_flags(self, flags: int, lv: Any) -> list[str]:
        # VIR_MIGRATE_TLS is carried: the agents' links use TLS instead;
        # not for a block migration's disks (they bypass the agents).
        return (migration_flags.unsupported(without_tls(flags, lv), lv) +
                migration_flags.unsupported_with_tls(flags, lv))

    def ping(self, host: str, timeout: float | None = None
             ) -> dict[str, Any]:
        """Ping ``host``'s agent.

        :param timeout: seconds to wait, instead of ``agent_rpc_timeout``.
        :raises AgentUnreachable: it did not answer (any error, e.g.
            ``MessagingTimeout``).
        :returns: the agent's answer (``host``, ``version``,
            ``peer_port``).
        """
        try:
            return dict(self.agents.ping(host, timeout=timeout))
        except Exception as err:
            raise AgentUnreachable(
                host=host, reason=str(err) or type(err).__name__) from err

    def check_destination(self, host: str) -> None:
        """The new destination's agent must answer (``agent_ping_timeout``).

        :raises AgentUnreachable: it did not.
        """
        self.ping(host, timeout=CONF.dcmigrate_compute.agent_ping_timeout)

    # -- attempts ------------------------------------------------------------

    def run_attempt(self, driver: Any, context: Any, instance: Any,
                    dest: str, block_migration: Any, migrate_data: Any,
                    guest: Any, device_names: list[str]) -> None:
        nova_driver = _nova_libvirt_driver()
        lv = nova_driver.libvirt
        flags = migration_flags_for(
            driver, instance, bool(migrate_data.block_migration), lv)
        bad = self.unsupported_flags(flags, lv)
        if bad:
            # Before any agent is prepared: Nova rolls back as for any
            # failed job.
            raise UnsupportedByAgents(flags=migration_flags.describe(bad))
        mig = self._migration(instance, migrate_data,
                              str(driver.dcmigrate_host))
        mig.tls = bool(flags & getattr(lv, "VIR_MIGRATE_TLS", 0))
        attempt = self._prepare(mig, dest, migrate_data)
        agent_guest = copy.copy(guest)
        agent_guest._domain = _AgentDomain(guest._domain, self, mig,
                                           attempt, lv)
        if attempt.holders:
            self._gate(mig, attempt, guest)
        try:
            nova_driver.LibvirtDriver._live_migration_operation(
                driver, context, instance, dest, block_migration,
                migrate_data, agent_guest, device_names)
        except Exception:
            # The job ended without completing (stopped for a redirect, or
            # failed): the sessions end, the destination keeps its pages.
            attempt.running = False
            self._abort_agents(mig, [mig.source, attempt.dest.host],
                               attempt.number)
            raise
        finally:
            attempt.running = False

    def stop_attempt(self, guest: Any) -> None:
        """Abort the attempt's agent sessions, then libvirt's job.

        Sessions first: both agents then see the stream end as the abort
        it is (INFO), not as QEMU failing under them (ERROR). The
        destination keeps its pages either way.
        """
        mig = self.migrations.get(guest.uuid)
        if mig is not None and mig.attempts:
            attempt = mig.attempts[-1]
            self._note_link_rate(mig, attempt, guest)
            if attempt.running:
                self._abort_agents(mig, [mig.source, attempt.dest.host],
                                   attempt.number)
        guest.abort_job()

    def configure_downtime(self, guest: Any, downtime_ms: int) -> None:
        mig = self.migrations.get(guest.uuid)
        if mig is not None:
            with mig.lock:
                mig.wanted_downtime = downtime_ms
                if mig.gated:
                    LOG.debug("Downtime %(ms)d ms deferred while holders "
                              "relay", {"ms": downtime_ms})
                    return
        guest.migrate_configure_max_downtime(downtime_ms)

    def end_migration(self, instance_uuid: str) -> None:
        """Drop the migration's sessions and page stores on every host."""
        with self._lock:
            mig = self.migrations.pop(instance_uuid, None)
        if mig is None:
            return
        for attempt in mig.attempts:
            attempt.running = False
        for host in sorted(mig.hosts):
            try:
                self.agents.cleanup(host, mig.migration_id)
            except Exception as err:  # noqa: BLE001 - the agent may be gone
                LOG.warning("migration %(mid)s: agent cleanup on %(h)s: "
                            "%(err)s", {"mid": mig.migration_id, "h": host,
                                        "err": err})

    # -- helpers -------------------------------------------------------------

    def _migration(self, instance: Any, migrate_data: Any,
                   source: str) -> AgentMigration:
        with self._lock:
            mig = self.migrations.get(instance.uuid)
            if mig is None:
                migration = _field(migrate_data, "migration")
                mid = str(getattr(migration, "uuid", None) or uuid.uuid4())
                mig = AgentMigration(mid, secrets.token_hex(32), source)
                memory_mb = getattr(getattr(instance, "flavor", None),
                                    "memory_mb", None)
                if isinstance(memory_mb, int) and memory_mb > 0:
                    mig.guest_memory = memory_mb * 1024 * 1024
                self.migrations[instance.uuid] = mig
            return mig

    def endpoint(self, host: str, migrate_data: Any) -> AgentEndpoint:
        """Where ``host``'s agent listens for other agents."""
        address = CONF.dcmigrate_compute.agent_addresses.get(host)
        if not address:
            address = _field(migrate_data, "target_connect_addr") or host
        address = str(address)
        if not netutils.is_valid_ip(address):
            try:
                address = str(socket.getaddrinfo(
                    address, None, type=socket.SOCK_STREAM)[0][4][0])
            except (OSError, IndexError) as err:
                raise AgentTransportError(
                    reason="cannot resolve the agent address of host %s "
                           "(%s); set [dcmigrate_compute] agent_addresses "
                           "or [libvirt] live_migration_inbound_addr"
                           % (host, err)) from err
        try:
            port = int(self.agents.ping(host)["peer_port"])
        except Exception as err:
            raise AgentTransportError(
                reason="no dcmigrate agent answers for host %s: %s"
                       % (host, err)) from err
        return AgentEndpoint(host, address, port)

    def prepare_next(self, instance: Any, dest: str,
                     migrate_data: Any) -> None:
        """Prepare the agents of the next attempt to ``dest`` while the
        running attempt goes on (the redirect's worker thread).

        Why: the new destination's agent is then known to be ready before
        the running attempt is stopped (if not, the migration goes on to
        its destination), and its preparation is off the switch's
        critical path.  Only when the running attempt's sessions can be
        aborted alone (agent RPC 1.4) and ``dest`` is not the running
        attempt's destination.

        :raises AgentTransportError: the agents refused; nothing is left
            prepared.
        """
        mig = self.migrations.get(instance.uuid)
        if mig is None or not attempts.can_prepare_ahead(self.agents):
            return
        with mig.lock:
            if mig.attempts and mig.attempts[-1].dest.host == dest:
                return
            self._drop_ahead(mig)
            try:
                mig.ahead = self._new_attempt(mig, dest, migrate_data)
            except Exception as err:
                self._forget_host(mig, dest)
                if isinstance(err, AgentTransportError):
                    raise
                raise AgentTransportError(
                    reason="the agents of %s could not be prepared: %s"
                           % (dest, err)) from err

    def drop_prepared(self, instance_uuid: str) -> None:
        mig = self.migrations.get(instance_uuid)
        if mig is not None:
            with mig.lock:
                self._drop_ahead(mig)

    def _drop_ahead(self, mig: AgentMigration) -> None:
        ahead, mig.ahead = mig.ahead, None
        if ahead is None:
            return
        ahead.running = False
        self._abort_agents(mig, [mig.source, ahead.dest.host],
                           ahead.number)
        self._forget_host(mig, ahead.dest.host)

    def _forget_host(self, mig: AgentMigration, host: str) -> None:
        """Drop the migration on ``host`` unless an attempt went there
        (then it holds pages for later attempts)."""
        if host in {a.dest.host for a in mig.attempts} or \
                host == mig.source:
            return
        mig.endpoints.pop(host, None)
        try:
            self.agents.cleanup(host, mig.migration_id)
        except Exception as err:  # noqa: BLE001 - the agent may be gone
            LOG.warning("migration %(mid)s: agent cleanup on %(h)s: "
                        "%(err)s", {"mid": mig.migration_id, "h": host,
                                    "err": err})

    def _prepare(self, mig: AgentMigration, dest: str,
                 migrate_data: Any) -> AgentAttempt:
        """Prepare the source and destination agents for a new attempt
        (or take the ones :meth:`prepare_next` prepared)."""
        with mig.lock:
            ahead, mig.ahead = mig.ahead, None
            if ahead is not None and ahead.dest.host == dest and \
                    ahead.number == len(mig.attempts):
                mig.attempts.append(ahead)
                LOG.info("migration %(mid)s attempt %(n)d: %(src)s -> "
                         "%(dst)s through the agents prepared before the "
                         "previous attempt stopped (socket %(path)s, "
                         "holders %(holders)s)",
                         {"mid": mig.migration_id, "n": ahead.number,
                          "src": mig.source, "dst": dest,
                          "path": ahead.socket,
                          "holders": ahead.holders or "none"})
                return ahead
            if ahead is not None:
                mig.ahead = ahead
                self._drop_ahead(mig)
            attempt = self._new_attempt(mig, dest, migrate_data)
            mig.attempts.append(attempt)
        return attempt

    def _new_attempt(self, mig: AgentMigration, dest: str,
                     migrate_data: Any) -> AgentAttempt:
        """Prepare the agents of attempt ``len(mig.attempts)`` to
        ``dest`` (``mig.lock`` held); not yet in ``mig.attempts``."""
        with mig.lock:
            if mig.source == dest:
                raise AgentTransportError(
                    reason="the destination is the source")
            endpoint = self.endpoint(dest, migrate_data)
            mig.endpoints[dest] = endpoint
            number = len(mig.attempts)
            holders = attempts.holders_for(
                (a.dest.host for a in mig.attempts), dest)
            specs = [dataclasses.asdict(mig.endpoints[h]) for h in holders]
            path = attempts.prepare_agents(
                self.agents, mig.migration_id, mig.secret, number,
                mig.source, dest, endpoint.address, endpoint.port, specs,
                True, mig.link_rate or None, tls=mig.tls,
                guest_memory=mig.guest_memory)
            attempt = AgentAttempt(number, endpoint, path, holders)
        LOG.info("migration %(mid)s attempt %(n)d: %(src)s -> %(dst)s "
                 "through the agents (socket %(path)s, holders "
                 "%(holders)s, %(tls)s)",
                 {"mid": mig.migration_id, "n": number, "src": mig.source,
                  "dst": dest, "path": path, "holders": holders or "none",
                  "tls": "TLS" if mig.tls else "no TLS"})
        if not mig.tls:
            _warn_unencrypted_once()
        return attempt

    def _gate(self, mig: AgentMigration, attempt: AgentAttempt,
              guest: Any) -> None:
        """Hold switchover back until the new destination has every
        relayed page, so the relay backlog never lands in the downtime.

        The wait runs in the transport's small thread pool (one task per
        gated attempt, woken as soon as the attempt ends, bounded by
        ``relay_wait_timeout``)."""
        with mig.lock:
            mig.gated = True
        guest.migrate_configure_max_downtime(GATE_DOWNTIME_MS)
        self._gate_pool().submit(self._ungate_when_relayed, mig, attempt,
                                 guest)

    def _gate_pool(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._gates is None:
                self._gates = concurrent.futures.ThreadPoolExecutor(
                    max_workers=GATE_WORKERS,
                    thread_name_prefix="dcmigrate-gate")
            return self._gates

    def _ungate_when_relayed(self, mig: AgentMigration,
                             attempt: AgentAttempt, guest: Any) -> None:
        timeout = CONF.dcmigrate_compute.relay_wait_timeout
        done = attempts.wait_relayed(
            self.agents, attempt.dest.host, mig.migration_id,
            attempt.number, lambda: attempt.running, timeout=timeout,
            stop=attempt.ended)
        if not done.relayed and not done.ended:
            LOG.warning("migration %(mid)s attempt %(n)d: relays not in "
                        "after %(t)d s; switchover no longer held back",
                        {"mid": mig.migration_id, "n": attempt.number,
                         "t": timeout})
        attempt.source_rate = done.source_rate
        with mig.lock:
            if mig.attempts[-1] is not attempt:
                return
            mig.gated = False
            downtime = mig.wanted_downtime
            if not attempt.running:
                return
        if downtime is None:
            downtime = int(_nova_libvirt_driver().CONF.libvirt
                           .live_migration_downtime)
        try:
            guest.migrate_configure_max_downtime(downtime)
        except Exception as err:  # noqa: BLE001 - e.g. the job just ended
            LOG.warning("migration %(mid)s: cannot restore max downtime: "
                        "%(err)s", {"mid": mig.migration_id, "err": err})

    def _note_link_rate(self, mig: AgentMigration, attempt: AgentAttempt,
                        guest: Any) -> None:
        """Remember the rate the source link really moved (bytes/s)."""
        rate = attempts.measured_link_rate(bool(attempt.holders),
                                           attempt.source_rate,
                                           guest._domain.jobStats)
        if rate:
            mig.link_rate = rate

    def _abort_agents(self, mig: AgentMigration, hosts: list[str],
                      attempt: int | None = None) -> None:
        attempts.abort_agents(self.agents, mig.migration_id, hosts,
                              attempt=attempt)


_UNENCRYPTED_WARNED = threading.Event()


def _warn_unencrypted_once() -> None:
    if not _UNENCRYPTED_WARNED.is_set():
        _UNENCRYPTED_WARNED.set()
        LOG.warning("Live migrations through the dcmigrate agents run "
                    "without TLS: guest memory crosses the migration "
                    "network unencrypted (authenticated, not secret). Set "
                    "[libvirt] live_migration_with_native_tls = True and "
                    "[dcmigrate_agent] peer_tls on every agent to encrypt "
                    "it.")


def without_tls(flags: int, lv: Any) -> int:
    """``flags`` minus VIR_MIGRATE_TLS: the agents' links carry the TLS,
    QEMU's stream must stay parseable."""
    return flags & ~int(getattr(lv, "VIR_MIGRATE_TLS", 0))


def _field(obj: Any, name: str) -> Any:
    """A Nova object's field, or None when unset (no lazy-load)."""
    try:
        if name not in obj:
            return None
    except TypeError:
        pass
    return getattr(obj, name, None)
