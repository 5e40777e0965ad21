"""Finishing a redirect that a nova-compute restart interrupted.

The source persists each redirected run (:mod:`.journal`). When its
nova-compute starts again, the driver's ``process_instances_at_startup``
(which Nova 34 calls before its own ``_init_instance``) hands every
instance that has a record to :meth:`Reconciler.reconcile`:

* The instance is still live-migrating from this host and its domain runs
  here: the libvirt job (if any survived) is aborted and Nova's own
  rollback (``_rollback_live_migration`` with the current destination and
  the persisted ``LiveMigrateData`` and source BDMs) reverts the
  allocations to the source, restores the volume attachments, tears down
  the current destination and sets the migration ``error`` (as Nova's
  ``_reset_live_migration`` would) and the instance ACTIVE here.
* The instance is still live-migrating but its domain no longer runs here
  (the job completed to the destination just before the restart): nothing
  is touched; an ERROR names the hosts, and Nova's ``_init_instance``
  handles the instance as it does for the stock driver. The record stays.
* Otherwise (the run had ended): the instance's host is where it runs.

Then every other host the record names (earlier destinations, a host
that was being prepared, hosts whose clean-up was pending) is released:
its port bindings, its domain and instance directory
(``rollback_live_migration_at_destination``), the Cinder attachments
made for it, and its part of the instance's
placement allocation. The dcmigrate agents of every host involved drop
the migration's sessions and page stores (agents also expire them after
``store_expiry``; the reconciler does not rely on that). A step that fails
goes to the driver's :class:`~.cleanup.CleanupQueue`, which the periodic
housekeeping retries; the record is dropped once nothing is pending.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nova.compute import task_states
from nova import exception as nova_exception
from nova import objects
from nova.objects import migrate_data as migrate_data_obj
from oslo_log import log as logging

from nova_dcmigrate.compute import cleanup
from nova_dcmigrate.compute import journal as run_journal

LOG = logging.getLogger(__name__)


class Reconciler:
    """Acts on the persisted records of one source at its start-up.

    :param manager: the starting ``ComputeManager`` (its clients and its
        private rollback helpers, pinned by the contract tests).
    :param journal: the source's records.
    :param cleanups: where failed steps are kept and retried.
    :param runs_here: ``runs_here(instance) -> bool``, whether the
        instance's domain runs on this host (the driver asks libvirt).
    :param abort_job: aborts a libvirt migration job that may have
        survived the restart (errors are ignored).
    :param drop_agent_sessions: ``(host, migration_uuid)``: that host's
        dcmigrate agent drops the migration (None: no agents).
    """

    def __init__(self, manager: Any, journal: run_journal.RunJournal,
                 cleanups: cleanup.CleanupQueue,
                 runs_here: Callable[[Any], bool],
                 abort_job: Callable[[Any], None],
                 drop_agent_sessions: Callable[[str, str], None] | None
                 ) -> None:
        self.manager = manager
        self.journal = journal
        self.cleanups = cleanups
        self._runs_here = runs_here
        self._abort_job = abort_job
        self._drop_agent_sessions = drop_agent_sessions

    def reconcile_all(self, context: Any, instances: Any) -> None:
        """Reconcile every record; instances of this host are passed in,
        others (the run ended elsewhere) are read from the database."""
        by_uuid = {i.uuid: i for i in instances}
        for uuid in self.journal.instances():
            record = self.journal.load(uuid)
            if record is None:
                continue
            instance = by_uuid.get(uuid)
            try:
                if instance is None:
                    instance = objects.Instance.get_by_uuid(context, uuid)
                self.reconcile(context, instance, record)
            except nova_exception.InstanceNotFound:
                LOG.info("Instance %(uuid)s of a persisted redirect is "
                         "gone; dropping its record", {"uuid": uuid})
                self.journal.remove(uuid)
            except Exception:
                LOG.exception("Finishing the interrupted redirect of live "
                              "migration %(mig)s failed; its record is "
                              "kept and retried at the next start",
                              {"mig": record.migration}, instance_uuid=uuid)

    def reconcile(self, context: Any, instance: Any,
                  record: run_journal.RunRecord) -> None:
        """Leave the instance ACTIVE on one host and nothing elsewhere."""
        migrating = (instance.task_state == task_states.MIGRATING and
                     instance.host == record.source)
        if migrating:
            if not self._runs_here(instance):
                LOG.error("Live migration %(mig)s was being redirected "
                          "when nova-compute stopped, and its guest no "
                          "longer runs on the source %(src)s (destinations "
                          "%(dests)s): left to Nova's start-up handling; "
                          "check the hosts by hand",
                          {"mig": record.migration, "src": record.source,
                           "dests": ", ".join(record.hosts())},
                          instance=instance)
                return
            LOG.info("Live migration %(mig)s was being redirected (to "
                     "%(dest)s) when nova-compute stopped; rolling it back "
                     "to this host", {"mig": record.migration,
                                      "dest": record.target or record.dest},
                     instance=instance)
            self._abort_job(instance)
            self._rollback(context, instance, record)
        final = instance.host
        steps = [self._release_step(context, instance, record, host)
                 for host in record.hosts() if host != final]
        pending = [s for s in steps if not self.cleanups.run(s)]
        self._drop_agents(record)
        if pending:
            record.cleanup_hosts = sorted({s.host for s in pending})
            self.journal.write(record)
        else:
            self.journal.remove(record.instance)
            LOG.info("Interrupted redirect of live migration %(mig)s "
                     "finished: the instance runs on %(host)s",
                     {"mig": record.migration, "host": final},
                     instance=instance)

    def finished(self, instance_uuid: str) -> bool:
        """Drop the record once no clean-up step of it is pending
        (called by the housekeeping after its retries)."""
        if self.cleanups.pending(instance_uuid):
            return False
        self.journal.remove(instance_uuid)
        return True

    # -- steps ----------------------------------------------------------------

    def _rollback(self, context: Any, instance: Any,
                  record: run_journal.RunRecord) -> None:
        md = None
        if record.migrate_data is not None:
            md = migrate_data_obj.LiveMigrateData.obj_from_primitive(
                record.migrate_data)
            # The migration as it is now, not as it was persisted.
            md.migration = objects.Migration.get_by_uuid(
                context, record.migration)
        source_bdms = [objects.BlockDeviceMapping.obj_from_primitive(p)
                       for p in record.source_bdms]
        # The host the last attempt (or the prepare) went to.
        dest = record.dest
        self.manager._rollback_live_migration(
            context, instance, dest, migrate_data=md,
            migration_status="error", source_bdms=source_bdms)

    def _release_step(self, context: Any, instance: Any,
                      record: run_journal.RunRecord,
                      host: str) -> cleanup.CleanupStep:
        return cleanup.CleanupStep(
            instance.uuid, record.migration, host,
            "releasing %s after a restart" % host,
            lambda: self.release_host(context, instance, record, host))

    def release_host(self, context: Any, instance: Any,
                     record: run_journal.RunRecord, host: str) -> None:
        """Release everything of the instance on ``host`` (idempotent).

        :raises Exception: the first step that failed (the others ran).
        """
        errors: list[Exception] = []

        def attempt(fn: Callable[[], None]) -> None:
            try:
                fn()
            except Exception as err:  # noqa: BLE001 - re-raised below
                errors.append(err)

        mgr = self.manager
        attempt(lambda: mgr.network_api.setup_networks_on_host(
            context, instance, host=host, teardown=True))
        attempt(lambda: self._clean_domain(context, instance, record, host))
        attempt(lambda: self._release_volumes(context, instance, record,
                                              host))
        attempt(lambda: self._release_allocation(context, instance, host))
        if errors:
            raise errors[0]

    def _clean_domain(self, context: Any, instance: Any,
                      record: run_journal.RunRecord, host: str) -> None:
        if record.migrate_data is None:
            return
        md = migrate_data_obj.LiveMigrateData.obj_from_primitive(
            record.migrate_data)
        do_cleanup, destroy_disks = \
            self.manager._live_migration_cleanup_flags(
                md, migr_ctxt=instance.migration_context)
        if do_cleanup:
            self.manager.compute_rpcapi.\
                rollback_live_migration_at_destination(
                    context, instance, host, destroy_disks=destroy_disks,
                    migrate_data=md)

    def _release_volumes(self, context: Any, instance: Any,
                         record: run_journal.RunRecord, host: str) -> None:
        mgr = self.manager
        bdms = objects.BlockDeviceMappingList.get_by_instance_uuid(
            context, instance.uuid)
        in_use = {b.attachment_id for b in bdms if b.is_volume}
        in_use |= {p.get("nova_object.data", {}).get("attachment_id")
                   for p in record.source_bdms}
        # The host's own connection_info is gone with the BDM rows it
        # wrote; deleting its Cinder attachment terminates the backend's
        # connection (the domain clean-up above disconnects the host).
        for attachment_id in record.attachments.get(host, []):
            if attachment_id in in_use:
                continue
            try:
                mgr.volume_api.attachment_delete(context, attachment_id)
            except nova_exception.VolumeAttachmentNotFound:
                pass

    def _release_allocation(self, context: Any, instance: Any,
                            host: str) -> None:
        for cn in objects.ComputeNodeList.get_all_by_host(context, host):
            self.manager.reportclient.\
                remove_provider_tree_from_instance_allocation(
                    context, instance.uuid, cn.uuid)

    def _drop_agents(self, record: run_journal.RunRecord) -> None:
        if self._drop_agent_sessions is None:
            return
        for host in [record.source, *record.hosts()]:
            try:
                self._drop_agent_sessions(host, record.migration)
            except Exception as err:  # noqa: BLE001 - agents expire them
                LOG.warning("The dcmigrate agent of %(host)s did not drop "
                            "migration %(mig)s (it expires it after "
                            "store_expiry): %(err)s",
                            {"host": host, "mig": record.migration,
                             "err": err})
