"""Nova libvirt compute driver that takes part in dcmigrate redirects.

``DCMigrateLibvirtDriver`` is the stock ``LibvirtDriver`` of nova 34.0.0
plus the hooks nova-dcmigrate needs on a compute host. It exists because
Nova offers no other in-process extension point on the compute side: the
custom compute manager and ``nova.hooks`` are gone, and a redirect must
drive ``migrateToURI3`` itself (see below). Without a redirect it behaves
exactly like the stock driver; that is checked by re-running Nova's own
libvirt live-migration functional tests against it
(``tests/functional/nova``).

Loading
-------

nova-compute imports ``'nova.virt.' + [DEFAULT] compute_driver``
(``nova.virt.driver.load_compute_driver``), so an out-of-tree driver must
be reachable under ``nova.virt``. nova-dcmigrate's wheel therefore ships a
one-line package ``nova.virt.dcmigrate`` (installed into nova's
``nova/virt/`` directory, the nova-lxd and compute-hyperv pattern; built
by ``setup.py`` from ``nova_dcmigrate/virt/nova_virt_shim``) that
re-exports this class. Install nova-dcmigrate from a wheel (not
editable) into nova-compute's environment and set::

    [DEFAULT]
    compute_driver = dcmigrate.DCMigrateLibvirtDriver

All ``[libvirt]`` options keep their meaning.

What it adds
------------

* The placement trait ``CUSTOM_DCMIGRATE_AGENT`` on the compute node
  resource provider, so that a redirect can ask the scheduler for hosts
  that run a dcmigrate agent (``required=CUSTOM_DCMIGRATE_AGENT``). It is
  reported only with ``[dcmigrate_compute] transport = agents`` and while
  the local agent answers its RPC ``ping`` (short timeout
  ``agent_ping_timeout``, pinged in ``init_host`` and then by the
  background housekeeping every ``agent_check_interval`` seconds, never
  inside ``update_provider_tree``; one WARNING when it stops answering);
  otherwise it is removed.
* The ``dcmigrate_compute`` RPC endpoint
  (:class:`nova_dcmigrate.compute.manager.RedirectEndpoint`), added to the
  compute manager's ``additional_endpoints`` when nova-compute loads the
  driver.
* Redirectable live migrations. A live migration runs as attempts, one
  per destination, each through Nova's own ``_live_migration`` (thread
  running the libvirt job, monitor loop, ``post_method`` or
  ``recover_method``). The monitor's job poll is the redirect point: when
  a redirect was requested, it hands the preparation of the new host
  (:mod:`nova_dcmigrate.compute.redirect`) to the run's worker thread and
  goes on with Nova's own monitoring (downtime steps, completion timeout,
  statistics) while the job to the old destination runs; once the worker
  is done, a poll stops that job, moves Nova's state over and ends the
  attempt without calling ``recover_method``. If the old job completes
  (or fails) while the new host is being prepared, the preparation is
  cancelled at its next step and undone before Nova's ``post_method``
  (or ``recover_method``) runs. The next attempt
  goes to the new host, and only the last one calls Nova's
  ``post_method`` (with the new host) or ``recover_method``. A redirect
  that fails while preparing leaves the migration going to the old
  destination; one that fails after stopping it rolls the migration back
  to the source. The instance never goes to ERROR for a redirect.

The libvirt job of an attempt is run and stopped by a
:class:`nova_dcmigrate.virt.libvirt.transport.MigrationTransport`, chosen
by ``[dcmigrate_compute] transport``:

* ``agents`` (default): :class:`~.transport.AgentTransport` sends each
  attempt through the dcmigrate agents so that the pages an old
  destination received are relayed instead of resent. Per attempt it
  prepares the local source agent and the destination's agent (RPC topic
  ``dcmigrate-agent``, server = host name; one migration id -- the Nova
  migration's uuid -- and one secret for all attempts; earlier
  destinations listed as holders), then runs Nova's own
  ``_live_migration_operation`` (flags, destination/persistent XML, disks,
  bandwidth unchanged) on a guest whose ``migrateToURI3`` gets
  ``VIR_MIGRATE_PARAM_URI = unix://<socket_dir>/<migration>.<n>/
  migration.sock`` (the agents' UNIX sockets; no listen address). While
  holders relay, the switchover is held back (1 ms maximum downtime;
  Nova's downtime steps are applied once the relays are in). A stopped
  attempt's agent sessions are aborted, its destination keeps its pages;
  when the
  migration ends every agent involved drops it. ``PARALLEL``,
  ``POSTCOPY``, ``COMPRESSED`` and ``TUNNELLED`` are refused in
  ``check_can_live_migrate_source`` (``MigrationPreCheckError``, before
  anything is claimed): the agents parse the single precopy stream, and
  falling back to the direct job would silently lose the memory reuse.
  ``TLS`` (``[libvirt] live_migration_with_native_tls``) is carried by
  the agents' own mutual TLS instead (``[dcmigrate_agent] peer_tls``),
  except with a block migration, which is refused with TLS: its disks go
  in libvirt's NBD stream straight to the destination and would cross in
  clear.
  How agents are addressed and which message bus is used: see
  :mod:`.transport`. The per-attempt logic mirrors the Nova-free
  controller (``nova_dcmigrate.virt.libvirt.controller``) and shares its
  helpers (:mod:`nova_dcmigrate.virt.attempts`, :mod:`.flags`).
* ``direct``: :class:`~.transport.DirectLibvirtTransport`, Nova's stock
  job (``migrateToURI3`` to the destination, ``abortJob``); a redirect
  resends memory, needs no agent on the new host, and a re-pick does not
  require the trait. Nova's functional harness uses it by default; tests
  that need agents (the trait, the agent transport) run in-process ones.

Without a redirect the driver behaves as the stock one, apart from the
path the stream takes.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
from typing import TYPE_CHECKING
from typing import Any

from nova import exception as nova_exception
from nova.virt.libvirt import driver as libvirt_driver
from nova.virt.libvirt import guest as libvirt_guest
from nova.virt.libvirt import migration as libvirt_migrate
from oslo_log import log as logging

from nova_dcmigrate.compute import cleanup
from nova_dcmigrate.compute import events as redirect_events
from nova_dcmigrate.compute import exception as redirect_exception
from nova_dcmigrate.compute import journal as run_journal
from nova_dcmigrate.compute import manager as redirect_manager
from nova_dcmigrate.compute import redirect
from nova_dcmigrate.compute import restart as redirect_restart
from nova_dcmigrate.compute import run as run_state
import nova_dcmigrate.conf
from nova_dcmigrate.exception import DcmigrateError
from nova_dcmigrate.scheduler import constants as scheduler_constants
from nova_dcmigrate.triggers import monitor as trigger_monitor
from nova_dcmigrate.virt.libvirt import flags as migration_flags
from nova_dcmigrate.virt.libvirt import housekeeping
from nova_dcmigrate.virt.libvirt import memory_backing
from nova_dcmigrate.virt.libvirt import progress as redirect_progress
from nova_dcmigrate.virt.libvirt import transport

if TYPE_CHECKING:
    from nova.compute import provider_tree as nova_provider_tree

LOG = logging.getLogger(__name__)
CONF = nova_dcmigrate.conf.CONF

#: Placement trait on each compute node provider whose host runs a
#: dcmigrate agent and this driver (defined with the scheduler hook).
AGENT_TRAIT = scheduler_constants.AGENT_TRAIT

#: The ``[DEFAULT] compute_driver`` value that loads this driver through
#: the ``nova.virt.dcmigrate`` shim package.
COMPUTE_DRIVER = "dcmigrate.DCMigrateLibvirtDriver"


def _libvirt() -> Any:
    # The libvirt module Nova's driver uses (fakelibvirt under Nova's
    # functional tests), looked up when needed, as Nova does.
    return libvirt_driver.libvirt


class _RedirectPoint:
    """The guest as Nova's monitor sees it: every job poll may redirect,
    and its downtime steps go through the transport (which may hold them
    back while holders relay)."""

    def __init__(self, guest: Any, on_poll: Any,
                 migration_transport: transport.MigrationTransport) -> None:
        self._guest = guest
        self._on_poll = on_poll
        self._transport = migration_transport

    def get_job_info(self) -> Any:
        return self._on_poll(self._guest.get_job_info())

    def migrate_configure_max_downtime(self, mstime: int) -> None:
        self._transport.configure_downtime(self._guest, mstime)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._guest, name)


class DCMigrateLibvirtDriver(libvirt_driver.LibvirtDriver):
    """The stock libvirt driver plus the dcmigrate compute-side hooks."""

    def __init__(self, virtapi: Any, read_only: bool = False) -> None:
        """Create the driver as ``LibvirtDriver`` does, plus our endpoint.

        :param virtapi: the ``nova.virt.virtapi.VirtAPI`` given by the
            compute manager; with nova-compute's ``ComputeVirtAPI`` the
            redirect endpoint is added to the manager's
            ``additional_endpoints`` (served once the service starts).
        :param read_only: open a read-only libvirt connection.
        """
        super().__init__(virtapi, read_only=read_only)
        group = CONF.dcmigrate_compute
        #: Live migrations this host runs as the source.
        self.dcmigrate_runs = run_state.Registry(
            group.finished_status_entries,
            actions=redirect_events.ActionRecorder(),
            history_per_instance=group.redirect_history_per_instance,
            history_instances=group.redirect_history_instances)
        # Live progress of redirect records (branch api).
        self.dcmigrate_runs.progress = functools.partial(
            redirect_progress.redirect_progress, self)
        #: Runs and stops the libvirt job of each attempt
        #: (``[dcmigrate_compute] transport``).
        self.dcmigrate_transport: transport.MigrationTransport
        if group.transport == "direct":
            self.dcmigrate_transport = transport.DirectLibvirtTransport()
        else:
            self.dcmigrate_transport = transport.AgentTransport()
        self._dcmigrate_redirector: redirect.Redirector | None = None
        #: Automatic redirect triggers ([dcmigrate_auto]).
        self.dcmigrate_triggers = trigger_monitor.TriggerMonitor(
            lambda: self.dcmigrate_host,
            lambda: self.dcmigrate_redirector().reportclient)
        #: Failed clean-up steps of redirects, retried by the housekeeping.
        self.dcmigrate_cleanups = cleanup.CleanupQueue(
            group.cleanup_retries, group.cleanup_retry_interval)
        self.dcmigrate_agent_probe = housekeeping.AgentProbe(
            self._dcmigrate_ping_agent, lambda: self.dcmigrate_host,
            AGENT_TRAIT)
        self._dcmigrate_housekeeper = housekeeping.Housekeeper(
            self.dcmigrate_housekeeping,
            lambda: CONF.dcmigrate_compute.housekeeping_interval,
            "dcmigrate-housekeeping")
        self._dcmigrate_log_filter = housekeeping.stopped_job_filter()
        #: Redirected runs persisted for a restart (compute/journal.py).
        self.dcmigrate_runs.journal = run_journal.RunJournal(
            group.state_dir or os.path.join(CONF.state_path, "dcmigrate",
                                            "runs"),
            group.run_record_max_bytes)
        manager = self._compute_manager()
        if manager is not None:
            manager.additional_endpoints.append(
                redirect_manager.RedirectEndpoint(self))
        LOG.info("dcmigrate libvirt driver loaded (transport %(transport)s)"
                 "; trait %(trait)s reported while the local dcmigrate "
                 "agent answers", {"trait": AGENT_TRAIT,
                                   "transport": group.transport})

    def _compute_manager(self) -> Any:
        # ComputeVirtAPI keeps the manager that loaded the driver.
        return getattr(self.virtapi, "_compute", None)

    @property
    def dcmigrate_host(self) -> str:
        """This compute service's host name."""
        manager = self._compute_manager()
        if manager is not None:
            return str(manager.host)
        return str(libvirt_driver.CONF.host)

    def dcmigrate_redirector(self) -> redirect.Redirector:
        """Return the redirect orchestrator bound to the compute manager.

        The driver wires it: what the new host needs is asked of the
        transport, failed clean-ups go to the driver's queue.
        """
        if self._dcmigrate_redirector is None:
            manager = self._compute_manager()
            if manager is None:
                raise redirect_exception.RedirectError(
                    reason="the driver runs outside nova-compute")
            migration_transport = self.dcmigrate_transport
            self._dcmigrate_redirector = redirect.Redirector(
                manager,
                check_destination=migration_transport.check_destination,
                require_agent=isinstance(migration_transport,
                                         transport.AgentTransport),
                cleanups=self.dcmigrate_cleanups)
        return self._dcmigrate_redirector

    # -- housekeeping and the agent trait ------------------------------------

    def init_host(self, host: str) -> None:
        """Stock start-up, then one agent ping and the housekeeping thread.

        The ping runs here, before the first provider tree update and not
        under the resource tracker's lock.
        """
        super().init_host(host)
        if isinstance(self.dcmigrate_transport, transport.AgentTransport):
            self.dcmigrate_agent_probe.refresh()
        self._dcmigrate_housekeeper.start()

    def process_instances_at_startup(self, context: Any,
                                     instances: Any) -> Any:
        """Stock checks, then finish redirects a restart interrupted.

        Nova 34 calls this before its own ``_init_instance``: a redirect
        this host ran as the source is rolled back or cleaned up here
        (:mod:`nova_dcmigrate.compute.restart`) so that Nova finds the
        instance ACTIVE on one host.
        """
        instances = super().process_instances_at_startup(context, instances)
        reconciler = self.dcmigrate_reconciler()
        if reconciler is not None:
            reconciler.reconcile_all(context, instances)
        return instances

    def dcmigrate_reconciler(self) -> redirect_restart.Reconciler | None:
        """The start-up reconciler of persisted redirects (None outside
        nova-compute)."""
        manager = self._compute_manager()
        journal = self.dcmigrate_runs.journal
        if manager is None or journal is None:
            return None
        agent_transport = self.dcmigrate_transport
        drop = None
        if isinstance(agent_transport, transport.AgentTransport):
            drop = agent_transport.agents.cleanup
        return redirect_restart.Reconciler(
            manager, journal, self.dcmigrate_cleanups,
            runs_here=self._dcmigrate_runs_here,
            abort_job=self._dcmigrate_abort_leftover_job,
            drop_agent_sessions=drop)

    def _dcmigrate_runs_here(self, instance: Any) -> bool:
        try:
            return bool(self._host.get_guest(instance).is_active())
        except nova_exception.InstanceNotFound:
            return False

    def _dcmigrate_abort_leftover_job(self, instance: Any) -> None:
        # A job started by the previous process may still run in libvirt.
        try:
            super().live_migration_abort(instance)
        except Exception as err:  # noqa: BLE001 - usually no job at all
            LOG.debug("No migration job to abort at start-up: %(err)s",
                      {"err": err}, instance=instance)

    def cleanup_host(self, host: str) -> None:
        """Stop the housekeeping thread, then the stock clean-up."""
        self._dcmigrate_housekeeper.stop()
        super().cleanup_host(host)

    def dcmigrate_housekeeping(self) -> None:
        """One round of background work (also called by tests).

        Re-pings the local agent once ``agent_check_interval`` passed and
        retries failed redirect clean-up steps that are due.
        """
        if (isinstance(self.dcmigrate_transport, transport.AgentTransport)
                and self.dcmigrate_agent_probe.due(
                    CONF.dcmigrate_compute.agent_check_interval)):
            self.dcmigrate_agent_probe.refresh()
        self.dcmigrate_cleanups.retry()
        self._dcmigrate_drop_finished_records()

    def _dcmigrate_drop_finished_records(self) -> None:
        # A record kept for pending clean-up steps (of an ended run, or of
        # a start-up reconciliation) goes once its steps are done.
        reconciler = self.dcmigrate_reconciler()
        if reconciler is None:
            return
        journal = reconciler.journal
        for uuid in journal.instances():
            if self.dcmigrate_runs.get(uuid) is not None:
                continue
            record = journal.load(uuid)
            if record is not None and record.cleanup_hosts:
                reconciler.finished(uuid)

    def _dcmigrate_ping_agent(self) -> None:
        agent_transport = self.dcmigrate_transport
        if not isinstance(agent_transport, transport.AgentTransport):
            raise transport.AgentTransportError(
                reason="transport is not agents")
        agent_transport.ping(
            self.dcmigrate_host,
            timeout=CONF.dcmigrate_compute.agent_ping_timeout)

    def dcmigrate_traits(self) -> dict[str, bool]:
        """Return the dcmigrate traits this driver owns.

        Same shape as ``LibvirtDriver.static_traits``: a trait mapped to
        True is reported, one mapped to False is removed from the compute
        node provider.

        :returns: ``{trait name: supported}``: :data:`AGENT_TRAIT` is
            supported only when the agent transport is used and the local
            agent answered its last ping (:meth:`dcmigrate_agent_answers`).
        """
        if not isinstance(self.dcmigrate_transport,
                          transport.AgentTransport):
            return {AGENT_TRAIT: False}
        return {AGENT_TRAIT: self.dcmigrate_agent_answers()}

    def dcmigrate_agent_answers(self) -> bool:
        """Whether this host's dcmigrate agent answered its last ping.

        Never pings: the answer comes from ``init_host`` and the
        housekeeping thread (:meth:`dcmigrate_housekeeping`).
        """
        if not isinstance(self.dcmigrate_transport,
                          transport.AgentTransport):
            return False
        return self.dcmigrate_agent_probe.answers()

    def update_provider_tree(
            self, provider_tree: nova_provider_tree.ProviderTree,
            nodename: str,
            allocations: dict[str, Any] | None = None) -> None:
        """Report the stock libvirt inventory and traits plus ours.

        Runs under Nova's ``COMPUTE_RESOURCE_SEMAPHORE``: only cached
        answers are used here.

        :param provider_tree: the compute node's provider tree, as for
            ``ComputeDriver.update_provider_tree``.
        :param nodename: name of the compute node provider to update.
        :param allocations: allocations to edit on a reshape, or None.
        :raises ReshapeNeeded: from the stock driver, unchanged.
        """
        traits = self.dcmigrate_traits()
        # Applied before the stock code runs so that the copy of the tree
        # the stock driver keeps in self.provider_tree includes them too.
        provider_tree.add_traits(
            nodename, *(t for t, supported in traits.items() if supported))
        provider_tree.remove_traits(
            nodename, *(t for t, supported in traits.items() if not supported))
        super().update_provider_tree(
            provider_tree, nodename, allocations=allocations)

    # -- live migration as redirectable attempts -----------------------------

    def _live_migration(self, context: Any, instance: Any, dest: str,
                        post_method: Any, recover_method: Any,
                        block_migration: Any, migrate_data: Any) -> None:
        """Run the live migration as attempts, one per destination.

        Each attempt is Nova's own ``_live_migration``; an attempt stopped
        for a redirect ends without calling ``recover_method``, and the
        next one starts with the new destination and its migrate data.
        Nova's ``post_method``/``recover_method`` run exactly once.
        """
        try:
            self._dcmigrate_live_migration(
                context, instance, dest, post_method, recover_method,
                block_migration, migrate_data)
        finally:
            # Completed or rolled back: nothing of it is left in the agents.
            self.dcmigrate_transport.end_migration(instance.uuid)

    def _dcmigrate_live_migration(self, context: Any, instance: Any,
                                  dest: str, post_method: Any,
                                  recover_method: Any, block_migration: Any,
                                  migrate_data: Any) -> None:
        if "migration" not in migrate_data:
            # Not called by nova-compute's _do_live_migration: nothing to
            # redirect (and nothing to validate requests against).
            super()._live_migration(context, instance, dest, post_method,
                                    recover_method, block_migration,
                                    migrate_data)
            return
        # The manager's post_method is a partial holding the BDMs as they
        # were before the destination's pre_live_migration.
        source_bdms = getattr(post_method, "keywords", {}).get("source_bdms")
        run = run_state.LiveMigrationRun(
            instance.uuid, migrate_data.migration, self.dcmigrate_host, dest,
            migrate_data, source_bdms if source_bdms is not None else [])
        self.dcmigrate_runs.add(run)
        outcome = [run_state.ROLLED_BACK]

        def post(ctxt: Any, inst: Any, dst: str, block: Any,
                 md: Any) -> None:
            try:
                run.completing()
            except redirect_exception.RunStateError:
                # A bug, but the guest is on ``dst``: Nova must finish.
                LOG.exception("Live migration completed in an unexpected "
                              "redirect state", instance=inst)
            # Completed while a new host was being prepared: that host is
            # released before Nova's post-migration reads the BDMs.
            self._dcmigrate_settle_prepare(ctxt, inst, run)
            outcome[0] = run_state.COMPLETED
            post_method(ctxt, inst, dst, block, md)

        def recover(ctxt: Any, inst: Any, dst: str, md: Any,
                    migration_status: str = "failed") -> None:
            if run.switch is not None:
                LOG.info("Attempt to %(dest)s stopped for the redirect to "
                         "%(new)s", {"dest": dst, "new": run.switch[0]},
                         instance=inst)
                return
            self._dcmigrate_settle_prepare(ctxt, inst, run)
            recover_method(ctxt, inst, dst, md,
                           migration_status=migration_status)

        try:
            attempt_dest, attempt_md = dest, migrate_data
            while True:
                super()._live_migration(
                    context, instance, attempt_dest, post, recover,
                    block_migration, attempt_md)
                switch = run.take_switch()
                if switch is None:
                    return
                attempt_dest, attempt_md = switch
                if run.abort_requested:
                    LOG.info("Live migration aborted during its redirect to "
                             "%(dest)s; rolling back", {"dest": attempt_dest},
                             instance=instance)
                    recover_method(context, instance, attempt_dest,
                                   attempt_md, migration_status="cancelled")
                    return
                LOG.info("Live migration continues to %(dest)s",
                         {"dest": attempt_dest}, instance=instance)
        finally:
            self._dcmigrate_settle_prepare(context, instance, run)
            self.dcmigrate_runs.finish(run, outcome[0])
            run.shutdown()

    def _live_migration_monitor(self, context: Any, instance: Any,
                                guest: Any, dest: str, post_method: Any,
                                recover_method: Any, block_migration: Any,
                                migrate_data: Any, future: Any,
                                disk_paths: Any) -> None:
        """Nova's monitor, with our redirect point in its job polls."""
        run = self.dcmigrate_runs.get(instance.uuid)
        # -- automatic redirect triggers (nova_dcmigrate.triggers) --
        if run is not None and self.dcmigrate_triggers.enabled():
            self.dcmigrate_triggers.attempt_started(
                context, instance, run,
                self._live_migration_data_gb(instance, disk_paths))
        # --
        if run is not None:
            guest = _RedirectPoint(guest, functools.partial(
                self._dcmigrate_poll, context, instance, run, guest, future,
                block_migration), self.dcmigrate_transport)
        super()._live_migration_monitor(
            context, instance, guest, dest, post_method, recover_method,
            block_migration, migrate_data, future, disk_paths)

    def check_can_live_migrate_source(self, context: Any, instance: Any,
                                      dest_check_data: Any,
                                      block_device_info: Any = None) -> Any:
        """The stock checks, then refuse flags the transport can't carry.

        Here, on the source before anything is claimed, so that Nova fails
        the request cleanly (migration ``error``, instance ACTIVE on the
        source) instead of rolling back a started migration.

        :raises MigrationPreCheckError: e.g. post-copy or parallel
            connections enabled while the agents carry the stream.
        """
        data = super().check_can_live_migrate_source(
            context, instance, dest_check_data,
            block_device_info=block_device_info)
        lv = _libvirt()
        flags = transport.migration_flags_for(
            self, instance, bool(data.block_migration), lv)
        bad = self.dcmigrate_transport.unsupported_flags(flags, lv)
        if bad:
            raise nova_exception.MigrationPreCheckError(
                reason=str(transport.UnsupportedByAgents(
                    flags=migration_flags.describe(bad))))
        return data

    def _live_migration_operation(self, context: Any, instance: Any,
                                  dest: str, block_migration: Any,
                                  migrate_data: Any, guest: Any,
                                  device_names: Any) -> None:
        """Run the attempt's job; a job stopped for a redirect is no error.

        Nova's ``_live_migration`` collects this thread's exception and
        would put the instance in ERROR. While the run stops the job on
        purpose, libvirt's (and the agents') errors are the expected end
        (INFO; Nova's own ERROR line for it is lowered to INFO by
        :class:`~.housekeeping.StoppedJobLogFilter`); any other error is
        logged at ERROR and recorded in the run's status, and the monitor
        finds out from libvirt how the job ended.
        """
        run = self.dcmigrate_runs.get(instance.uuid)
        guest = memory_backing.keep_backing(
            guest, CONF.dcmigrate_compute.memory_backing, instance)
        local = self._dcmigrate_log_filter.local
        local.stopping = (lambda: run.stopping) if run is not None else None
        try:
            self.dcmigrate_transport.run_attempt(
                self, context, instance, dest, block_migration,
                migrate_data, guest, device_names)
        except (_libvirt().libvirtError, DcmigrateError) as err:
            if run is not None and run.stopping:
                LOG.info("Migration job to %(dest)s ended for a redirect: "
                         "%(err)s", {"dest": dest, "err": err},
                         instance=instance)
                return
            if run is not None and run.abort_sent:
                # Nova's monitor rolls back to the source; Nova 34 would
                # also collect this error (future.result()) and put the
                # instance in ERROR after the rollback.
                LOG.info("Migration job to %(dest)s ended by the user's "
                         "abort: %(err)s", {"dest": dest, "err": err},
                         instance=instance)
                return
            raise
        except Exception as err:
            if run is not None and run.stopping:
                LOG.exception("Migration job to %(dest)s failed while it was "
                              "stopped for a redirect", {"dest": dest},
                              instance=instance)
                run.record_error(err)
                return
            raise
        finally:
            local.stopping = None

    def _get_guest_memory_backing_config(
            self, inst_topology: Any, numatune: Any, flavor: Any,
            image_meta: Any) -> Any:
        """Nova's backing, made shareable for the dcmigrate agents
        (``[dcmigrate_compute] memory_backing``, see
        :mod:`.memory_backing`)."""
        membacking = super()._get_guest_memory_backing_config(
            inst_topology, numatune, flavor, image_meta)
        return memory_backing.configure(
            membacking, CONF.dcmigrate_compute.memory_backing)

    def live_migration_abort(self, instance: Any) -> None:
        """Abort, also while a redirect is being prepared or switched.

        During a redirect the abort is recorded (a running preparation is
        cancelled at its next step) and acted on as soon as the redirect
        reaches a point where the migration can be rolled back to the
        source cleanly.
        """
        run = self.dcmigrate_runs.get(instance.uuid)
        if run is not None and run.defer_abort():
            LOG.info("Abort requested while redirecting; deferred until the "
                     "redirect step ends", instance=instance)
            return
        super().live_migration_abort(instance)

    # -- the redirect point (monitor thread) ----------------------------------

    def _dcmigrate_prepare(self, context: Any, instance: Any,
                           run: run_state.LiveMigrationRun,
                           host: str | None, block_migration: Any) -> Any:
        # The run's worker thread: returns the Preparation or the error,
        # for the monitor's next poll (or whoever settles it).
        redirector = self.dcmigrate_redirector()
        try:
            prep = redirector.prepare(context, instance, run, host,
                                      block_migration)
        except Exception as err:  # noqa: BLE001 - handed to the monitor
            if not isinstance(err, DcmigrateError):
                LOG.exception("Preparing the redirect failed",
                              instance=instance)
            return err
        # The new attempt's agents too, while the job still runs: off the
        # switch's critical path, and a destination whose agents refuse
        # leaves the migration going on to the old one.
        try:
            self.dcmigrate_transport.prepare_next(
                instance, str(prep.host), prep.migrate_data)
        except Exception as err:  # noqa: BLE001 - handed to the monitor
            LOG.warning("Preparing the agents of %(host)s failed; the "
                        "live migration continues to %(dest)s: %(err)s",
                        {"host": prep.host, "dest": run.dest, "err": err},
                        instance=instance)
            redirector.undo(context, instance, prep)
            return redirect_exception.RedirectPreparationFailed(
                migration=run.migration.uuid, host=prep.host,
                step="preparing the agents", reason=str(err),
                destination=run.dest)
        return prep

    def _dcmigrate_undo(self, context: Any, instance: Any,
                        prep: Any) -> None:
        """Release the new host, its prepared agents included."""
        try:
            self.dcmigrate_transport.drop_prepared(instance.uuid)
        except Exception as err:  # noqa: BLE001 - the host is still undone
            LOG.warning("Releasing the prepared agents failed: %(err)s",
                        {"err": err}, instance=instance)
        self.dcmigrate_redirector().undo(context, instance, prep)

    def _dcmigrate_settle_prepare(self, context: Any, instance: Any,
                                  run: run_state.LiveMigrationRun) -> None:
        """Cancel a running preparation, wait for it, undo what it did.

        Called when the job ended on its own (post or rollback) while a
        new host was prepared. The wait is bounded by the step under way
        (each RPC has its timeout); the steps after it are skipped.
        """
        with run.lock:
            future, run.preparation = run.preparation, None
            run.cancel.set()
        if future is None:
            return
        LOG.info("The migration job ended while a redirect was prepared; "
                 "cancelling it", instance=instance)
        prep = future.result()
        if isinstance(prep, redirect.Preparation):
            self._dcmigrate_undo(context, instance, prep)
            run.record_error(redirect_exception.RedirectCancelled(
                migration=run.migration.uuid, host=prep.host,
                step="handing it over",
                reason="the migration job ended meanwhile"))
        elif isinstance(prep, BaseException):
            run.record_error(prep)

    def _dcmigrate_poll(self, context: Any, instance: Any,
                        run: run_state.LiveMigrationRun, guest: Any,
                        future: Any, block_migration: Any, info: Any) -> Any:
        """Runs in the monitor thread at every job poll; returns the job
        info the monitor acts on. Never waits for the new host."""
        # Automatic redirect triggers: a sample, never a wait.
        self.dcmigrate_triggers.observe(run, info)
        lv = _libvirt()
        if (info.type not in (lv.VIR_DOMAIN_JOB_NONE,
                              lv.VIR_DOMAIN_JOB_UNBOUNDED) or
                future.done()):
            # The job ended: post/recover settle any preparation.
            return info
        with run.lock:
            preparing = run.preparation
        if preparing is None:
            pending, host = run.take_request()
            if pending:
                with run.lock:
                    run.preparation = run.executor().submit(
                        self._dcmigrate_prepare, context, instance, run,
                        host, block_migration)
            return info
        if not preparing.done():
            return info
        with run.lock:
            run.preparation = None
        prep = preparing.result()
        if isinstance(prep, BaseException):
            if not isinstance(prep, redirect_exception.RedirectCancelled):
                LOG.warning("Redirect failed; the live migration continues "
                            "to %(dest)s: %(err)s",
                            {"dest": run.dest, "err": prep},
                            instance=instance)
            if run.abort_requested:
                run.record_error(prep)
                return self._dcmigrate_cancel(guest, future, instance, run)
            run.failed(prep)
            return info
        redirector = self.dcmigrate_redirector()
        if not run.prepared():
            # The user's abort came in after the last step: release the
            # new host, stop the job and let Nova roll back to the source.
            self._dcmigrate_undo(context, instance, prep)
            run.record_error(redirect_exception.RedirectCancelled(
                migration=run.migration.uuid, host=prep.host,
                step="handing it over",
                reason="the live migration was aborted"))
            return self._dcmigrate_cancel(guest, future, instance, run)

        # SWITCHING: the point of no return for the old destination.
        stopped = self._dcmigrate_stop_attempt(guest, future, instance)
        if stopped is not True:
            # The guest reached the old destination first ("completed"),
            # or the job did not end in time ("timeout"): the monitor goes
            # on with the job as libvirt reports it.
            self._dcmigrate_undo(context, instance, prep)
            run.failed(redirect_exception.RedirectError(
                reason="the migration job to %s could not be stopped (%s)"
                       % (run.dest, stopped)))
            return guest.get_job_info()
        try:
            redirector.commit(context, instance, run, prep)
        except Exception as err:
            LOG.exception("Redirect to %(host)s failed after the job to "
                          "%(dest)s stopped; rolling back to the source",
                          {"host": prep.host, "dest": run.dest},
                          instance=instance)
            self._dcmigrate_undo(context, instance, prep)
            run.failed(err)
            return libvirt_guest.JobInfo(type=lv.VIR_DOMAIN_JOB_FAILED)
        run.redirected(str(prep.host), prep.migrate_data)
        # Ends this attempt; our recover wrapper skips Nova's rollback.
        return libvirt_guest.JobInfo(type=lv.VIR_DOMAIN_JOB_CANCELLED)

    def _dcmigrate_cancel(self, guest: Any, future: Any, instance: Any,
                          run: run_state.LiveMigrationRun) -> Any:
        # The deferred abort: Nova's rollback then runs with migration
        # status "cancelled".
        lv = _libvirt()
        run.cancelling()
        if self._dcmigrate_stop_attempt(guest, future, instance) is True:
            return libvirt_guest.JobInfo(type=lv.VIR_DOMAIN_JOB_CANCELLED)
        run.move(run_state.RUNNING)
        return guest.get_job_info()

    def _dcmigrate_stop_attempt(self, guest: Any, future: Any,
                                instance: Any) -> bool | str:
        """Stop the attempt's job; True once it ended without completing.

        :returns: True, or why not ("completed" when the guest switched
            over to the old destination first, "timeout").
        """
        lv = _libvirt()
        try:
            self.dcmigrate_transport.stop_attempt(guest)
        except lv.libvirtError as err:
            # E.g. no job any more: find out below how it ended.
            LOG.info("Stopping the migration job: %(err)s", {"err": err},
                     instance=instance)
        try:
            future.result(
                timeout=CONF.dcmigrate_compute.attempt_stop_timeout)
        except concurrent.futures.TimeoutError:
            return "timeout"
        except Exception as err:
            # _live_migration_operation returns for a stopped job; what
            # reaches here is the error of a job that ended otherwise.
            LOG.warning("The stopped migration job ended with an error: "
                        "%(err)s", {"err": err}, instance=instance)
        job = guest.get_job_info().type
        if job == lv.VIR_DOMAIN_JOB_NONE:
            job = libvirt_migrate.find_job_type(guest, instance)
        if job == lv.VIR_DOMAIN_JOB_COMPLETED:
            return "completed"
        return True
