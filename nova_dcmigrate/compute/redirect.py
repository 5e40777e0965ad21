"""Nova-side orchestration of a redirect, run on the migration's source.

A redirect moves everything Nova knows about the running live migration
from its current ("old") destination to a new one, so that the migration
ends exactly as if it had targeted the new host from the start (state
table: ``nova-live-migration.md`` section 2.3). It has two phases, run by
the source's migration monitor thread while the libvirt job to the old
destination keeps running:

1. :meth:`Redirector.prepare` -- the new host is chosen (named, or
   re-picked by nova-scheduler), claimed in placement for the instance
   consumer *next to* the old destination's claim, checked
   (its dcmigrate agent must answer a ping when the agents carry the
   stream, then ``check_can_live_migrate_destination``), given INACTIVE
   port bindings, volume attachments and ``pre_live_migration``. Any
   failure (all before the running attempt is stopped) undoes what
   was done for the new host (:meth:`Redirector.undo`) and raises
   :class:`~nova_dcmigrate.compute.exception.RedirectError`; the migration
   goes on to the old destination untouched.
2. After the driver stopped the libvirt job to the old destination,
   :meth:`Redirector.commit` records the new destination in the migration
   record and the instance's availability zone, then releases the old
   destination: its volume connections and attachments, its domain,
   instance directory, VIFs, inactive port bindings and claims
   (``rollback_live_migration_at_destination``), and its placement
   allocation. Its dcmigrate agent is not told anything: it keeps the
   pages it stored and relays them to the new destination.

The migration consumer (holding the source's resources), the migration's
``status`` (``running``) and the instance's ``task_state`` (``MIGRATING``)
and host never change here: Nova's own post-migration path
(``_post_live_migration`` with the new destination) or rollback finishes
the migration. Nova's compute manager offers these steps only as private
helpers; they are reached through the manager the driver was given
(``ComputeVirtAPI._compute``), and pinned by nova==34.0.0.

Not handled yet (refused by Nova's own checks or left as is): NUMA-aware
claims and PCI/vPMEM/mdev resources of the new destination are made by its
checks as in any live migration, but a redirect does not rewrite the
instance's ``migration_context`` for them.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import threading
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

from nova import availability_zones
import nova.conf
from nova import exception as nova_exception
from nova import objects
from nova.scheduler import utils as scheduler_utils
from nova import servicegroup
from oslo_log import log as logging

from nova_dcmigrate.compute import events
from nova_dcmigrate.compute import exception
from nova_dcmigrate.compute import records
import nova_dcmigrate.conf
from nova_dcmigrate.scheduler import exception as scheduler_exception
from nova_dcmigrate.scheduler import repick

LOG = logging.getLogger(__name__)
NOVA_CONF = nova.conf.CONF
CONF = nova_dcmigrate.conf.CONF

#: Errors of prepare() that already say what failed: raised unchanged.
_OWN_ERRORS = (exception.RedirectError,
               scheduler_exception.NoValidRedirectTarget)

# Phases of a LiveMigrationRun, as get_redirect_status reports them.
RUNNING = "running"
REQUESTED = "redirect-requested"
PREPARING = "preparing"
SWITCHING = "switching"
COMPLETING = "completing"
COMPLETED = "completed"
ROLLED_BACK = "rolled-back"
#: Phases in which a new redirect request is refused as in progress.
BUSY = frozenset({REQUESTED, PREPARING, SWITCHING})

#: Migration statuses of a live migration that is switching over or done.
SWITCHOVER_STATUSES = frozenset({"post-migrating", "completed", "done"})
POSTCOPY_STATUS = "running (post-copy)"
LIVE_MIGRATION = "live-migration"

#: Migration fields that name the destination.
DEST_FIELDS = ("dest_compute", "dest_node", "dest_compute_id", "dest_host")


class LiveMigrationRun:
    """One live migration run by this source, across its attempts.

    Shared by the RPC endpoint (which validates and queues requests) and
    the monitor thread (which acts on them); ``lock`` guards the fields
    both touch.
    """

    def __init__(self, instance_uuid: str, migration: Any, source: str,
                 dest: str, migrate_data: Any, source_bdms: Any) -> None:
        # Reentrant: request() takes it, also when its caller holds it.
        self.lock = threading.RLock()
        self.instance_uuid = instance_uuid
        self.migration = migration
        self.source = source
        #: Destination of every attempt so far; the current one is last.
        self.destinations = [dest]
        self.migrate_data = migrate_data
        #: The BDMs as on the source before any pre_live_migration.
        self.source_bdms = source_bdms
        self.phase = RUNNING
        #: Host asked for (None: re-pick) while a request is pending.
        self.requested_host: str | None = None
        self.request_pending = False
        #: Host being prepared, while PREPARING/SWITCHING.
        self.target: str | None = None
        self.redirects = 0
        self.last_error: dict[str, Any] | None = None
        #: A user abort arrived while the migration was between attempts.
        self.abort_requested = False
        #: The attempt being stopped for a redirect (its failure is ours).
        self.stopping = False
        #: (destination, migrate_data) of the next attempt, once committed.
        self.switch: tuple[str, Any] | None = None
        # -- redirect records (branch api) --
        #: Record of the request being acted on (requested/preparing).
        self.pending_record: records.RedirectRecord | None = None
        #: Record of the redirect the current attempt runs for.
        self.running_record: records.RedirectRecord | None = None
        #: Where new records go (set by Registry.add); None: nowhere.
        self.history: records.RedirectHistory | None = None
        #: Writes Nova instance actions (set by Registry.add).
        self.actions: events.ActionRecorder | None = None
        # -- end redirect records --

    @property
    def dest(self) -> str:
        """The current destination."""
        return self.destinations[-1]

    def check_redirectable(self, migration: Any, host: str | None) -> None:
        """Refuse a redirect request that cannot be acted on.

        :param migration: the migration named by the request, as read from
            the database by the caller.
        :param host: the requested new destination, or None.
        :raises RedirectError: the reason, with its data; nothing changes.
        """
        mig = self.migration
        if migration.uuid != mig.uuid:
            raise exception.UnknownMigration(
                migration=migration.uuid, instance=self.instance_uuid,
                running=mig.uuid)
        if migration.migration_type != LIVE_MIGRATION:
            raise exception.NotLiveMigration(
                migration=migration.uuid,
                migration_type=migration.migration_type)
        status = migration.status
        if status == POSTCOPY_STATUS:
            raise exception.PostCopyMigration(migration=mig.uuid,
                                              destination=self.dest)
        if status in SWITCHOVER_STATUSES or self.phase == COMPLETING:
            raise exception.SwitchingOver(
                migration=mig.uuid, destination=self.dest,
                status=status if status != "running" else self.phase)
        if status != "running":
            raise exception.MigrationNotRunning(migration=mig.uuid,
                                                status=status)
        if self.phase in BUSY:
            raise exception.RedirectInProgress(
                migration=mig.uuid, state=self.phase,
                target=self.target or self.requested_host or "(scheduler)")
        if host == self.source:
            raise exception.InvalidRedirectTarget(
                migration=mig.uuid, host=host,
                reason="it is the source of the migration")
        if host == self.dest:
            raise exception.InvalidRedirectTarget(
                migration=mig.uuid, host=host,
                reason="it is the current destination")

    def request(self, host: str | None, *, requested_by: str | None = None,
                reason: str | None = None,
                evidence: dict[str, Any] | None = None,
                context: Any = None) -> records.RedirectRecord:
        """Queue a validated redirect for the monitor thread.

        Call after :meth:`check_redirectable` (both under ``lock``).

        :param requested_by: ``user:<id>`` or ``trigger:<name>``
            (:func:`records.user_requester`, :func:`records.trigger_requester`).
        :param context: a Nova RequestContext; with one, the redirect gets
            its Nova instance action (:mod:`.events`).
        :returns: the new record (state ``requested``).
        """
        with self.lock:
            self.requested_host = host
            self.request_pending = True
            self.phase = REQUESTED
            self.last_error = None
            record = records.RedirectRecord(
                server_id=self.instance_uuid,
                migration_id=self.migration.uuid, source=self.source,
                old_destination=self.dest, new_destination=host,
                requested_by=requested_by or "unknown", reason=reason,
                evidence=evidence)
            self.pending_record = record
            if self.history is not None:
                self.history.add(record)
        if context is not None and self.actions is not None:
            self.actions.start(context, record)
        return record

    def _record_to(self, record: records.RedirectRecord | None,
                   state: records.RedirectState,
                   error: BaseException | dict[str, str] | None = None
                   ) -> None:
        # Under self.lock. A record already final stays as it is.
        if record is None or record.finished:
            return
        record.transition(state, error=error)
        if record.finished and self.actions is not None:
            self.actions.finish(record)

    def take_request(self) -> tuple[bool, str | None]:
        """Return ``(pending, host)`` and mark a pending request taken."""
        with self.lock:
            if not self.request_pending:
                return False, None
            self.request_pending = False
            self.phase = PREPARING
            self.target = self.requested_host
            self._record_to(self.pending_record,
                            records.RedirectState.PREPARING)
            return True, self.requested_host

    def failed(self, err: BaseException) -> None:
        """Record a redirect that did not happen; back to RUNNING."""
        with self.lock:
            self.phase = RUNNING
            self.target = None
            self.last_error = {"type": type(err).__name__,
                               "message": str(err),
                               "data": dict(getattr(err, "kwargs", {}))}
            self._record_to(self.pending_record,
                            records.RedirectState.FAILED, err)
            self.pending_record = None

    def redirected(self, dest: str, migrate_data: Any) -> None:
        """Record the committed switch to ``dest``."""
        with self.lock:
            self.destinations.append(dest)
            self.migrate_data = migrate_data
            self.switch = (dest, migrate_data)
            self.redirects += 1
            self.phase = SWITCHING
            record = self.pending_record
            if record is not None:
                record.new_destination = dest
                # The earlier redirect was carried out; this one takes
                # the migration further.
                self._record_to(self.running_record,
                                records.RedirectState.COMPLETED)
                self._record_to(record, records.RedirectState.RUNNING)
                self.running_record, self.pending_record = record, None

    def take_switch(self) -> tuple[str, Any] | None:
        """Return and clear the committed switch, if any."""
        with self.lock:
            switch, self.switch = self.switch, None
            self.stopping = False
            if switch is not None:
                self.phase = RUNNING
                self.target = None
            return switch

    def status(self) -> dict[str, Any]:
        """Return the redirect status as sent over RPC.

        Keys: ``instance``, ``migration`` (UUIDs), ``source``,
        ``destination`` (current), ``destinations`` (every destination,
        oldest first), ``state`` (one of the phase names of this module),
        ``target`` (host being prepared, or None), ``redirects`` (count
        done), ``last_error`` (``{type, message, data}`` of the last
        refused or failed redirect, or None).
        """
        with self.lock:
            return {
                "instance": self.instance_uuid,
                "migration": self.migration.uuid,
                "source": self.source,
                "destination": self.dest,
                "destinations": list(self.destinations),
                "state": self.phase,
                "target": self.target or (
                    self.requested_host if self.request_pending else None),
                "redirects": self.redirects,
                "last_error": self.last_error,
            }


class Registry:
    """The live migrations this source runs, plus recently finished ones."""

    def __init__(self, finished_entries: int,
                 history: records.RedirectHistory | None = None,
                 actions: events.ActionRecorder | None = None) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, LiveMigrationRun] = {}
        self._finished: collections.OrderedDict[str, dict[str, Any]] = (
            collections.OrderedDict())
        self._finished_entries = finished_entries
        group = CONF.dcmigrate_compute
        #: Redirect records of every instance, running and finished.
        self.history = history or records.RedirectHistory(
            group.redirect_history_per_instance,
            group.redirect_history_instances)
        self.actions = actions or events.ActionRecorder()
        #: ``progress(instance_uuid) -> dict | None`` of the running
        #: attempt (the driver's, which knows the transport); None: none.
        self.progress: Callable[[str], dict[str, Any] | None] | None = None

    def add(self, run: LiveMigrationRun) -> None:
        run.history = self.history
        run.actions = self.actions
        with self._lock:
            self._running[run.instance_uuid] = run
            self._finished.pop(run.instance_uuid, None)

    def get(self, instance_uuid: str) -> LiveMigrationRun | None:
        with self._lock:
            return self._running.get(instance_uuid)

    def finish(self, run: LiveMigrationRun, phase: str) -> None:
        """Forget a run, keeping its last status."""
        self.update_progress(run)
        with run.lock:
            run.phase = phase
            run.request_pending = False
            _finish_records(run, phase)
        status = run.status()
        with self._lock:
            if self._running.get(run.instance_uuid) is run:
                del self._running[run.instance_uuid]
            if self._finished_entries:
                self._finished[run.instance_uuid] = status
                while len(self._finished) > self._finished_entries:
                    self._finished.popitem(last=False)

    def finished_status(self, instance_uuid: str) -> dict[str, Any] | None:
        with self._lock:
            return self._finished.get(instance_uuid)

    def records(self, instance_uuid: str, migration_uuid: str | None = None
                ) -> list[records.RedirectRecord]:
        """The instance's redirect records, newest first; the running
        one with fresh progress."""
        run = self.get(instance_uuid)
        if run is not None:
            self.update_progress(run)
        return self.history.list(instance_uuid, migration_uuid)

    def update_progress(self, run: LiveMigrationRun) -> None:
        """Refresh the progress of the run's running redirect."""
        record = run.running_record
        if self.progress is None or record is None:
            return
        try:
            record.set_progress(self.progress(run.instance_uuid))
        except Exception as err:  # noqa: BLE001 - progress is best effort
            LOG.debug("No redirect progress for %(id)s: %(err)s",
                      {"id": record.id, "err": err})


def _finish_records(run: LiveMigrationRun, phase: str) -> None:
    # The live migration ended (run.lock held): its open records end too.
    pending = run.pending_record
    if pending is not None:
        if phase == COMPLETED:
            run._record_to(pending, records.RedirectState.FAILED,
                           exception.SwitchingOver(
                               migration=run.migration.uuid,
                               destination=run.dest, status=COMPLETED))
        else:
            run._record_to(pending, records.RedirectState.ROLLED_BACK, {
                "code": "LiveMigrationRolledBack",
                "message": "the live migration was rolled back to %s "
                           "before the redirect ran" % run.source})
    running = run.running_record
    if running is not None:
        if phase == COMPLETED:
            run._record_to(running, records.RedirectState.COMPLETED)
        else:
            run._record_to(running, records.RedirectState.ROLLED_BACK, {
                "code": "LiveMigrationRolledBack",
                "message": "the live migration to %s failed and was rolled "
                           "back to %s" % (run.dest, run.source)})
    run.pending_record = run.running_record = None


@dataclasses.dataclass
class Preparation:
    """What :meth:`Redirector.prepare` did for one new destination."""

    migration: Any
    old_dest: str
    old_node: str
    old_migrate_data: Any
    #: Destination fields of the migration record before the redirect.
    migration_fields: dict[str, Any]
    host: str | None = None
    node: str | None = None
    compute_node: Any = None
    #: LiveMigrateData for the new host (from its checks, then from its
    #: pre_live_migration).
    migrate_data: Any = None
    claimed: bool = False
    checked: bool = False
    bound: bool = False
    pre_live_migration_called: bool = False
    #: The instance's BDMs as the old destination's pre_live_migration
    #: left them (its volume attachments).
    dest_bdms: Any = None


class _NoVifPlugWait(Exception):
    """The new host says not to wait for network-vif-plugged events."""


@contextlib.contextmanager
def _best_effort(what: str, instance: Any) -> Iterator[None]:
    # Clean-up steps must not stop the ones after them.
    try:
        yield
    except Exception as err:
        LOG.warning("Redirect: %(what)s failed, continuing: %(err)s",
                    {"what": what, "err": err}, instance=instance,
                    exc_info=True)


class Redirector:
    """Moves Nova's state of a live migration to a new destination.

    :param manager: the source's ``nova.compute.manager.ComputeManager``;
        its RPC, network, volume and placement clients and its private
        live-migration helpers do the work, so everything happens exactly
        as in Nova's own live-migration paths.
    """

    def __init__(self, manager: Any) -> None:
        self.manager = manager
        self.servicegroup_api = servicegroup.API()

    # The manager's clients, read at each use: ComputeManager.reset()
    # (SIGHUP) replaces its compute RPC client.
    @property
    def compute_rpcapi(self) -> Any:
        return self.manager.compute_rpcapi

    @property
    def network_api(self) -> Any:
        return self.manager.network_api

    @property
    def volume_api(self) -> Any:
        return self.manager.volume_api

    @property
    def reportclient(self) -> Any:
        return self.manager.reportclient

    # -- validation helpers used by the RPC endpoint ----------------------

    def check_host(self, context: Any, run: LiveMigrationRun,
                   host: str) -> None:
        """Refuse a named host that is not an up nova-compute.

        :raises InvalidRedirectTarget: no such compute service, or down.
        """
        try:
            service = objects.Service.get_by_compute_host(context, host)
        except nova_exception.ComputeHostNotFound as err:
            raise exception.InvalidRedirectTarget(
                migration=run.migration.uuid, host=host,
                reason="no nova-compute service on that host") from err
        if not self.servicegroup_api.service_is_up(service):
            raise exception.InvalidRedirectTarget(
                migration=run.migration.uuid, host=host,
                reason="its nova-compute service is down")

    # -- phase 1 ------------------------------------------------------------

    def prepare(self, context: Any, instance: Any, run: LiveMigrationRun,
                host: str | None, block_migration: Any) -> Preparation:
        """Set up the new destination next to the running migration.

        :param host: the new destination, or None to ask nova-scheduler.
        :param block_migration: as given to the driver's live_migration.
        :raises RedirectError: (``RedirectPreparationFailed`` or the
            scheduler's ``NoValidRedirectTarget``) after everything done
            for the new host was undone.
        :returns: what was done, for :meth:`commit` or :meth:`undo`.
        """
        migration = run.migration
        prep = Preparation(
            migration=migration, old_dest=run.dest,
            old_node=migration.dest_node, old_migrate_data=run.migrate_data,
            migration_fields={f: getattr(migration, f) for f in DEST_FIELDS
                              if migration.obj_attr_is_set(f)})
        step = "choosing the new host"
        try:
            limits, provider_mapping = self._claim(
                context, instance, run, host, prep)
            new_host = str(prep.host)

            # Before anything else is set up there, and long before the
            # running attempt is stopped (point of no return).
            step = "checking the dcmigrate agent on %s" % prep.host
            self._check_agent(new_host)

            step = "running the live-migration checks on %s" % prep.host
            md = self.compute_rpcapi.check_can_live_migrate_destination(
                context, instance, prep.host, block_migration, None,
                migration, limits)
            prep.checked = True
            prep.migrate_data = md

            step = "binding ports on %s" % prep.host
            self._bind_ports(context, instance, prep, provider_mapping)

            step = "preparing %s (pre_live_migration)" % prep.host
            prep.dest_bdms = objects.BlockDeviceMappingList.\
                get_by_instance_uuid(context, instance.uuid)
            prep.pre_live_migration_called = True
            md = self._pre_live_migration(context, instance, new_host,
                                          block_migration, md,
                                          run.source_bdms)
            md.migration = migration
            prep.migrate_data = md
        except Exception as err:
            LOG.warning("Redirect of live migration %(migration)s to "
                        "%(host)s failed while %(step)s: %(err)s; undoing "
                        "it, the migration continues to %(dest)s",
                        {"migration": migration.uuid,
                         "host": prep.host or "(scheduler)", "step": step,
                         "err": err, "dest": run.dest}, instance=instance)
            self.undo(context, instance, prep)
            if isinstance(err, _OWN_ERRORS):
                raise
            raise exception.RedirectPreparationFailed(
                migration=migration.uuid, host=prep.host or "(scheduler)",
                step=step, reason=str(err) or type(err).__name__,
                destination=run.dest) from err
        LOG.info("Redirect of live migration %(migration)s: %(host)s is "
                 "ready", {"migration": migration.uuid, "host": prep.host},
                 instance=instance)
        return prep

    def _check_agent(self, host: str) -> None:
        # The source's transport knows whether the new host needs an agent
        # (agents: its agent must answer a ping; direct: nothing).
        migration_transport = getattr(self.manager.driver,
                                      "dcmigrate_transport", None)
        if migration_transport is not None:
            migration_transport.check_destination(host)

    def _claim(self, context: Any, instance: Any, run: LiveMigrationRun,
               host: str | None, prep: Preparation) -> tuple[Any, Any]:
        # The instance consumer holds the old destination; the new one is
        # added next to it ("doubled up"), never instead of it.
        migration = run.migration
        if host is None:
            spec = objects.RequestSpec.get_by_instance_uuid(
                context, instance.uuid)
            target = repick.schedule_redirect(
                context, instance, spec, migration,
                exclude_hosts=set(run.destinations), keep_claim=True,
                holders=list(run.destinations),
                report_client=self.reportclient,
                # Only the agents need one on the new host.
                require_agent=(
                    CONF.dcmigrate_compute.transport == "agents"))
            prep.host, prep.node = target.host, target.nodename
            prep.claimed = target.claimed
            prep.compute_node = objects.ComputeNode.get_by_host_and_nodename(
                context, target.host, target.nodename)
            return target.limits, target.provider_mapping

        prep.host = host
        nodes = objects.ComputeNodeList.get_all_by_host(context, host)
        if len(nodes) != 1:
            raise exception.InvalidRedirectTarget(
                migration=migration.uuid, host=host,
                reason="it has %d compute nodes; name a host with one"
                       % len(nodes))
        prep.compute_node = nodes[0]
        prep.node = nodes[0].hypervisor_hostname
        source_node = objects.ComputeNode.get_by_host_and_nodename(
            context, migration.source_compute, migration.source_node)
        # As the conductor does for a forced host, from the source
        # allocation (now held by the migration consumer).
        source_allocs = self.reportclient.get_allocs_for_consumer(
            context, migration.uuid)["allocations"]
        scheduler_utils.claim_resources_on_destination(
            context, self.reportclient, instance, source_node,
            prep.compute_node, source_allocations=source_allocs)
        prep.claimed = True
        return None, {}

    def _bind_ports(self, context: Any, instance: Any, prep: Preparation,
                    provider_mapping: Any) -> None:
        # INACTIVE bindings on the new host, as the conductor makes them
        # (LiveMigrationTask._bind_ports_on_destination); the destination
        # VIF details then come from them.
        if not self.network_api.has_port_binding_extension(context):
            return
        md = prep.migrate_data
        profiles = {}
        for vif in md.vifs:
            profile = vif.profile if "profile_json" in vif else {}
            if provider_mapping:
                allocation = self.network_api.get_binding_profile_allocation(
                    context, vif.port_id, provider_mapping)
                if allocation:
                    profile["allocation"] = allocation
            if profile:
                profiles[vif.port_id] = profile
        try:
            bindings = self.network_api.bind_ports_to_host(
                context=context, instance=instance, host=prep.host,
                vnic_types=None, port_profiles=profiles)
        finally:
            # bind_ports_to_host deletes what it bound if it fails, but a
            # teardown of the host's bindings is harmless either way.
            prep.bound = True
        for vif in md.vifs:
            binding = bindings[vif.port_id]
            vif.profile = binding.get("profile")
            vif.vnic_type = binding["vnic_type"]
            if "vif_details" in binding:
                vif.vif_details = binding["vif_details"]
            if "vif_type" in binding:
                vif.vif_type = binding["vif_type"]

    def _pre_live_migration(self, context: Any, instance: Any, host: str,
                            block_migration: Any, md: Any,
                            source_bdms: Any) -> Any:
        # What the manager's _do_pre_live_migration_from_source does, minus
        # its failure path (a full rollback of the migration): a failure
        # here only abandons the redirect. The new host's
        # pre_live_migration restores the BDMs itself when it fails.
        mgr = self.manager
        disk = None
        if "block_migration" in md and md.block_migration:
            bdi = mgr._get_instance_block_device_info(context, instance,
                                                      bdms=source_bdms)
            disk = mgr.driver.get_instance_disk_info(
                instance, block_device_info=bdi)
        events = mgr._get_neutron_events_for_live_migration(instance)
        on_error = mgr._neutron_failed_live_migration_callback
        try:
            with mgr.virtapi.wait_for_instance_event(
                    instance, events, timeout=NOVA_CONF.vif_plugging_timeout,
                    error_callback=on_error):
                md = self.compute_rpcapi.pre_live_migration(
                    context, instance, block_migration, disk, host, md)
                if events and not ("wait_for_vif_plugged" in md and
                                   md.wait_for_vif_plugged):
                    raise _NoVifPlugWait()
        except _NoVifPlugWait:
            pass
        except nova_exception.InstanceEventTimeout:
            if NOVA_CONF.vif_plugging_is_fatal:
                raise
            LOG.warning("Timed out waiting for network-vif-plugged events "
                        "from %(host)s; continuing", {"host": host},
                        instance=instance)
        return md

    def undo(self, context: Any, instance: Any, prep: Preparation) -> None:
        """Release everything :meth:`prepare` set up on the new host.

        Best effort: each step is logged on failure and the next one runs.
        The old destination's state is left as it was.
        """
        if prep.host is None:
            return
        if prep.pre_live_migration_called:
            with _best_effort("restoring the old destination's volume "
                              "attachments", instance):
                self._restore_volumes(context, instance, prep)
            with _best_effort("cleaning up %s" % prep.host, instance):
                self._clean_destination(context, instance, prep.host,
                                        prep.migrate_data)
        elif prep.bound:
            with _best_effort("deleting port bindings on %s" % prep.host,
                              instance):
                self.network_api.setup_networks_on_host(
                    context, instance, host=prep.host, teardown=True)
        if prep.checked and _numa_claimed(prep.migrate_data):
            with _best_effort("dropping the claim on %s" % prep.host,
                              instance):
                self.compute_rpcapi.drop_move_claim_at_destination(
                    context, instance, prep.host)
        with _best_effort("restoring the migration record", instance):
            self._restore_migration(context, instance, prep)
        if prep.claimed:
            with _best_effort("releasing the placement claim on %s"
                              % prep.host, instance):
                self.reportclient.\
                    remove_provider_tree_from_instance_allocation(
                        context, instance.uuid, prep.compute_node.uuid)

    def _restore_volumes(self, context: Any, instance: Any,
                         prep: Preparation) -> None:
        bdms = objects.BlockDeviceMappingList.get_by_instance_uuid(
            context, instance.uuid)
        before = {b.volume_id: b for b in prep.dest_bdms if b.is_volume}
        vol_bdms = [b for b in bdms if b.is_volume]
        changed = [b for b in vol_bdms
                   if b.volume_id in before and
                   b.attachment_id != before[b.volume_id].attachment_id]
        self.manager._remove_remote_volume_connections(
            context, prep.host, changed, instance)
        self.manager._rollback_volume_bdms(
            context, vol_bdms, list(before.values()), instance)

    def _restore_migration(self, context: Any, instance: Any,
                           prep: Preparation) -> None:
        # A NUMA claim on the new host (_claim_existing_migration) writes
        # the destination fields; put the old destination back.
        migration = prep.migration
        changed = False
        for field, value in prep.migration_fields.items():
            if getattr(migration, field) != value:
                setattr(migration, field, value)
                changed = True
        if changed:
            migration.save()

    def _clean_destination(self, context: Any, instance: Any, host: str,
                           md: Any) -> None:
        # What _rollback_live_migration does for a destination: its
        # domain, instance directory, VIFs, serial ports, vTPM secret,
        # mdevs and INACTIVE port bindings.
        if md is None:
            self.network_api.setup_networks_on_host(
                context, instance, host=host, teardown=True)
            return
        do_cleanup, destroy_disks = \
            self.manager._live_migration_cleanup_flags(
                md, migr_ctxt=instance.migration_context)
        if do_cleanup:
            self.compute_rpcapi.rollback_live_migration_at_destination(
                context, instance, host, destroy_disks=destroy_disks,
                migrate_data=md)
        else:
            self.network_api.setup_networks_on_host(
                context, instance, host=host, teardown=True)

    # -- phase 2 ------------------------------------------------------------

    def commit(self, context: Any, instance: Any, run: LiveMigrationRun,
               prep: Preparation) -> None:
        """Make the new host the destination; release the old one.

        Call only after the libvirt job to the old destination stopped.

        :raises Exception: if the migration record or the instance could
            not be saved; the caller then undoes ``prep`` and rolls the
            migration back to the source. Clean-up of the old destination
            is best effort (logged).
        """
        migration = run.migration
        old_cn = objects.ComputeNode.get_by_host_and_nodename(
            context, prep.old_dest, prep.old_node)
        cn = prep.compute_node
        migration.dest_compute = prep.host
        migration.dest_node = prep.node
        migration.dest_compute_id = cn.id
        migration.dest_host = str(cn.host_ip)
        migration.save()
        instance.availability_zone = (
            availability_zones.get_host_availability_zone(context, prep.host))
        instance.save()

        old = prep.old_dest
        with _best_effort("releasing volumes on %s" % old, instance):
            self._release_old_volumes(context, instance, run, prep)
        with _best_effort("cleaning up %s" % old, instance):
            self._clean_destination(context, instance, old,
                                    prep.old_migrate_data)
        if _numa_claimed(prep.old_migrate_data):
            with _best_effort("dropping the claim on %s" % old, instance):
                self.compute_rpcapi.drop_move_claim_at_destination(
                    context, instance, old)
        with _best_effort("releasing the placement allocation on %s" % old,
                          instance):
            self.reportclient.remove_provider_tree_from_instance_allocation(
                context, instance.uuid, old_cn.uuid)
        LOG.info("Live migration %(migration)s redirected from %(old)s to "
                 "%(new)s", {"migration": migration.uuid, "old": old,
                             "new": prep.host}, instance=instance)

    def _release_old_volumes(self, context: Any, instance: Any,
                             run: LiveMigrationRun,
                             prep: Preparation) -> None:
        # Disconnect each volume on the old destination with that host's
        # own connection_info (put back in the BDM for the call, since the
        # remote side reads it from there) and delete its attachment.
        current = {b.volume_id: b for b in
                   objects.BlockDeviceMappingList.get_by_instance_uuid(
                       context, instance.uuid) if b.is_volume}
        source = {b.volume_id: b for b in run.source_bdms if b.is_volume}
        for old in prep.dest_bdms or ():
            if not old.is_volume:
                continue
            cur = current.get(old.volume_id)
            src = source.get(old.volume_id)
            if (cur is None or old.attachment_id is None or
                    old.attachment_id == cur.attachment_id or
                    (src is not None and
                     old.attachment_id == src.attachment_id)):
                continue
            new_values = (cur.attachment_id, cur.connection_info)
            cur.attachment_id = old.attachment_id
            cur.connection_info = old.connection_info
            cur.save()
            try:
                self.compute_rpcapi.remove_volume_connection(
                    context, instance, old.volume_id, prep.old_dest)
            finally:
                cur.attachment_id, cur.connection_info = new_values
                cur.save()
            self.volume_api.attachment_delete(context, old.attachment_id)


def _numa_claimed(md: Any) -> bool:
    return bool(md is not None and
                "src_supports_numa_live_migration" in md and
                md.src_supports_numa_live_migration)
