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
helpers; they are reached through the manager the driver hands in, and
pinned by nova==34.0.0 (each guarded by a contract test,
``tests/functional/nova/test_nova_contract.py``). Nothing here knows the
driver: whether the new host needs an agent, and where failed clean-ups
go, are injected (:class:`Redirector`).

Refused at the request (:func:`check_supported_instance`): instances with
a NUMA topology or PCI requests, whose destination-specific resources
live in the ``migration_context`` a redirect does not rewrite.
"""

from __future__ import annotations

import contextlib
import dataclasses
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

from nova_dcmigrate.compute import cleanup
from nova_dcmigrate.compute import exception
# The run's state machine lives in .run; its names stay reachable here.
from nova_dcmigrate.compute.run import BUSY  # noqa: F401
from nova_dcmigrate.compute.run import COMPLETED  # noqa: F401
from nova_dcmigrate.compute.run import COMPLETING  # noqa: F401
from nova_dcmigrate.compute.run import LiveMigrationRun
from nova_dcmigrate.compute.run import PREPARING  # noqa: F401
from nova_dcmigrate.compute.run import Registry  # noqa: F401
from nova_dcmigrate.compute.run import REQUESTED  # noqa: F401
from nova_dcmigrate.compute.run import ROLLED_BACK  # noqa: F401
from nova_dcmigrate.compute.run import RUNNING  # noqa: F401
from nova_dcmigrate.compute.run import SWITCHING  # noqa: F401
import nova_dcmigrate.conf
from nova_dcmigrate.scheduler import exception as scheduler_exception
from nova_dcmigrate.scheduler import repick

LOG = logging.getLogger(__name__)
NOVA_CONF = nova.conf.CONF
CONF = nova_dcmigrate.conf.CONF

#: Errors of prepare() that already say what failed: raised unchanged.
_OWN_ERRORS = (exception.RedirectError,
               scheduler_exception.NoValidRedirectTarget)

#: Migration fields that name the destination.
DEST_FIELDS = ("dest_compute", "dest_node", "dest_compute_id", "dest_host")


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
    # Undoing the new host's set-up: a step failing must not stop the
    # ones after it. Only used before the old job was stopped (nothing of
    # the old destination is touched); commit() records its failures.
    try:
        yield
    except Exception as err:
        LOG.warning("Redirect: %(what)s failed, continuing: %(err)s",
                    {"what": what, "err": err}, instance=instance,
                    exc_info=True)


def check_supported_instance(context: Any, instance: Any,
                             migration: Any) -> None:
    """Refuse instances whose placement a redirect would get wrong.

    A redirect does not rewrite the instance's ``migration_context``, so
    NUMA-pinned or PCI-holding instances (whose destination-specific
    resources live there) are refused before anything changes. Read from
    the database: the caller's copy may not have these fields loaded.

    :raises UnsupportedInstance: with the reason.
    """
    # The instance, or (as some RPC callers send it) its UUID.
    uuid = instance if isinstance(instance, str) else instance.uuid
    current = objects.Instance.get_by_uuid(
        context, uuid, expected_attrs=["numa_topology", "pci_requests"])
    reasons = []
    if current.numa_topology:
        reasons.append("it has a NUMA topology")
    requests = current.pci_requests
    if requests and requests.requests:
        reasons.append("it has PCI device requests")
    if reasons:
        raise exception.UnsupportedInstance(
            migration=migration.uuid, instance=uuid,
            reason=" and ".join(reasons) + " (a redirect does not move "
            "its migration context)")


class Redirector:
    """Moves Nova's state of a live migration to a new destination.

    :param manager: the source's ``nova.compute.manager.ComputeManager``;
        its RPC, network, volume and placement clients and its private
        live-migration helpers do the work, so everything happens exactly
        as in Nova's own live-migration paths.
    :param check_destination: called with the new host before anything
        is set up there; raises if the host cannot take an attempt (e.g.
        its dcmigrate agent does not answer). Given by whoever runs the
        migration job (the driver's transport).
    :param require_agent: a re-pick must require the agent trait (the
        stream goes through the agents).
    :param cleanups: where failed clean-up steps of the old destination
        are kept and retried.
    """

    def __init__(self, manager: Any,
                 check_destination: Callable[[str], None] | None = None,
                 require_agent: bool = False,
                 cleanups: cleanup.CleanupQueue | None = None) -> None:
        self.manager = manager
        self.servicegroup_api = servicegroup.API()
        self._check_destination = check_destination
        self.require_agent = require_agent
        self.cleanups = cleanups or cleanup.CleanupQueue(
            CONF.dcmigrate_compute.cleanup_retries,
            CONF.dcmigrate_compute.cleanup_retry_interval)

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

        Runs in the run's prepare worker, never in the migration monitor.
        Between its steps it stops when ``run.cancel`` is set (the job
        ended, or the user aborted): what was done is undone and
        ``RedirectCancelled`` raised.

        :param host: the new destination, or None to ask nova-scheduler.
        :param block_migration: as given to the driver's live_migration.
        :raises RedirectError: (``RedirectPreparationFailed``,
            ``RedirectCancelled`` or the scheduler's
            ``NoValidRedirectTarget``) after everything done for the new
            host was undone.
        :returns: what was done, for :meth:`commit` or :meth:`undo`.
        """
        migration = run.migration
        prep = Preparation(
            migration=migration, old_dest=run.dest,
            old_node=migration.dest_node, old_migrate_data=run.migrate_data,
            migration_fields={f: getattr(migration, f) for f in DEST_FIELDS
                              if migration.obj_attr_is_set(f)})
        step = "choosing the new host"

        def go_on(next_step: str) -> str:
            if run.cancel.is_set():
                raise exception.RedirectCancelled(
                    migration=migration.uuid,
                    host=prep.host or "(scheduler)", step=next_step,
                    reason="the migration ended or was aborted meanwhile")
            return next_step

        try:
            go_on(step)
            # From here on a restarted source can undo it (.journal).
            run.persist()
            limits, provider_mapping = self._claim(
                context, instance, run, host, prep)
            new_host = str(prep.host)
            run.note_target(new_host)

            # Before anything else is set up there, and long before the
            # running attempt is stopped (point of no return).
            step = go_on("checking the dcmigrate agent on %s" % prep.host)
            self._check_agent(new_host)

            step = go_on("running the live-migration checks on %s"
                         % prep.host)
            md = self.compute_rpcapi.check_can_live_migrate_destination(
                context, instance, prep.host, block_migration, None,
                migration, limits)
            prep.checked = True
            prep.migrate_data = md

            step = go_on("binding ports on %s" % prep.host)
            self._bind_ports(context, instance, prep, provider_mapping)

            step = go_on("preparing %s (pre_live_migration)" % prep.host)
            prep.dest_bdms = objects.BlockDeviceMappingList.\
                get_by_instance_uuid(context, instance.uuid)
            run.note_attachments(prep.old_dest, [
                b.attachment_id for b in prep.dest_bdms
                if b.is_volume and b.attachment_id])
            prep.pre_live_migration_called = True
            md = self._pre_live_migration(context, instance, new_host,
                                          block_migration, md,
                                          run.source_bdms)
            md.migration = migration
            prep.migrate_data = md
            go_on("handing %s over to the monitor" % prep.host)
        except Exception as err:
            log = (LOG.info if isinstance(err, exception.RedirectCancelled)
                   else LOG.warning)
            log("Redirect of live migration %(migration)s to %(host)s "
                "stopped while %(step)s: %(err)s; undoing it",
                {"migration": migration.uuid,
                 "host": prep.host or "(scheduler)", "step": step,
                 "err": err}, instance=instance)
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
        # Whoever runs the job knows whether the new host needs an agent
        # (agents: its agent must answer a ping; direct: nothing).
        if self._check_destination is not None:
            self._check_destination(host)

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
                require_agent=self.require_agent)
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
            migration back to the source. A failed clean-up step of the
            old destination does not raise: it is logged at ERROR, listed
            in the run's ``cleanup_pending`` and retried
            (:class:`~.cleanup.CleanupQueue`).
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

        def step(what: str, fn: Callable[[], None]) -> None:
            # Each step runs once now; a failure is logged at ERROR, shown
            # in the run's status and retried by the periodic clean-up.
            cleanup_step = cleanup.CleanupStep(
                instance.uuid, migration.uuid, old, what, fn)
            if not self.cleanups.run(cleanup_step):
                with run.lock:
                    run.cleanup_pending.append(cleanup_step)

        step("releasing volumes on %s" % old,
             lambda: self._release_old_volumes(context, instance, run, prep))
        step("cleaning up %s" % old,
             lambda: self._clean_destination(context, instance, old,
                                             prep.old_migrate_data))
        if _numa_claimed(prep.old_migrate_data):
            step("dropping the claim on %s" % old,
                 lambda: self.compute_rpcapi.drop_move_claim_at_destination(
                     context, instance, old))
        step("releasing the placement allocation on %s" % old,
             lambda: self.reportclient.
             remove_provider_tree_from_instance_allocation(
                 context, instance.uuid, old_cn.uuid))
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
