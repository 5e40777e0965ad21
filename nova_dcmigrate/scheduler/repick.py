"""Re-pick: ask nova-scheduler for a new destination of a running migration.

Used when an operator redirects a live migration without naming a host.
The request is the one Nova's conductor makes for a live migration without
a host (``LiveMigrationTask._find_destination``): the instance's
RequestSpec, prepared by the same conductor code, sent to
``select_destinations`` with ``return_alternates=False``. On top of that:

* ``ignore_hosts`` holds the source, the current destination and every
  host the caller excludes (earlier destinations, hosts that failed);
* the root provider must have :data:`~.constants.AGENT_TRAIT`
  (``root_required``), so only hosts with a dcmigrate agent qualify
  (``require_agent=False`` drops this for a source whose ``[dcmigrate_compute]
  transport`` is ``direct``: no agent carries its stream, and hosts report
  the trait only with the agent transport);
* the ``dcmigrate_holders`` / ``dcmigrate_link_rates`` hints feed
  ``DCMigrateWeigher`` when nova-scheduler has it enabled.

The RequestSpec is cloned, so none of this reaches the caller's object or
the database.

Who owns the placement claim
----------------------------

nova-scheduler claims the chosen node for the **instance** consumer while
it selects. During a live migration that consumer already holds the
current destination (and the migration consumer holds the source), so the
claim "doubles up": the instance consumer then holds the current *and* the
new destination (``SchedulerReportClient.claim_resources``).

* :func:`select_new_destination` releases that claim before returning
  (only the new node's provider tree is removed from the instance consumer;
  the current destination's allocation is untouched). Placement looks
  exactly as before the call; the caller claims the new host itself.
* :func:`schedule_redirect` with ``keep_claim=True`` leaves the claim in
  place and hands it to the caller, which avoids a window in which another
  request takes the host. The caller then owns it: on success remove the
  *old* destination from the instance consumer
  (``remove_provider_tree_from_instance_allocation(ctx, instance.uuid,
  old_dest_compute_node_uuid)``); if the redirect to the new host fails
  or is abandoned, call :func:`release_claim`. A final rollback to the
  source (``_revert_allocation``'s move from the migration consumer)
  overwrites the instance consumer and so cleans both anyway.

Where it runs
-------------

Wherever the orchestration runs: it needs the message bus (scheduler RPC),
placement, neutron, and the remotable RequestSpec, InstanceMapping and
InstanceGroup lookups, which nova-compute reaches through the conductor.
Those API-database lookups work through a conductor that has the API
database (single-cell deployments, the super-conductor); in a multi-cell
deployment call it from the control plane.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Mapping
import dataclasses
from typing import Any

from nova.conductor.tasks import live_migrate
from nova import exception as nova_exception
from nova.scheduler.client import query as scheduler_query
from nova.scheduler.client import report as scheduler_report
from nova.scheduler import utils as scheduler_utils
from oslo_log import log as logging
from oslo_utils import excutils

from nova_dcmigrate.scheduler import constants
from nova_dcmigrate.scheduler import exception
from nova_dcmigrate.scheduler import hints

LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RedirectTarget:
    """The host nova-scheduler chose, and whether it is still claimed."""

    host: str
    nodename: str
    #: The new node's resource provider (root of its tree).
    compute_node_uuid: str
    #: ``objects.SchedulerLimits`` for the destination checks, or None.
    limits: Any
    #: RequestGroup requester id -> provider UUIDs of the scheduler's
    #: allocation candidate (for port bindings and PCI requests); empty
    #: when the request had no extra request groups.
    provider_mapping: dict[str, list[str]]
    #: True while the instance consumer holds the new node's resources.
    claimed: bool


def ignored_hosts(instance: Any, migration: Any,
                  exclude_hosts: Iterable[str]) -> list[str]:
    """Return the hosts a re-pick must never choose, sorted.

    :param instance: the migrating ``objects.Instance``.
    :param migration: its ``objects.Migration`` (live migration).
    :param exclude_hosts: further hosts, e.g. earlier destinations.
    :returns: the source, the current destination and ``exclude_hosts``.
    """
    hosts = set(exclude_hosts)
    for host in (instance.host, migration.source_compute,
                 migration.dest_compute):
        if host:
            hosts.add(host)
    return sorted(hosts)


def _request_spec_for_redirect(
        context: Any, instance: Any, request_spec: Any, migration: Any,
        ignore: list[str], holders: Iterable[str],
        link_rates: Mapping[str, float] | None,
        require_agent: bool = True) -> Any:
    spec = request_spec.obj_clone()
    # Were the running migration targeted (API "host" without force), the
    # spec would name the current destination; the clone must not.
    spec.requested_destination = None
    # The conductor's own preparation for a scheduler-picked live
    # migration: forced hosts reset, port and PCI request groups, server
    # group hosts, the source cell, project/user, network and BFV data.
    # A private method of nova 34.0.0, which nova-dcmigrate pins exactly.
    task = live_migrate.LiveMigrationTask(
        context, instance, None, None, None, migration, None, None, None,
        None, request_spec=spec)
    spec = task._get_request_spec_for_select_destinations(ignore)
    spec.ignore_hosts = ignore
    if require_agent:
        params = spec.request_level_params
        params.root_required = set(params.root_required) | {
            constants.AGENT_TRAIT}

    scheduler_hints = {}
    if spec.obj_attr_is_set("scheduler_hints") and spec.scheduler_hints:
        scheduler_hints = dict(spec.scheduler_hints)
    # Whatever a boot request said about these hints is stale now.
    scheduler_hints.pop(constants.HOLDERS_HINT, None)
    scheduler_hints.pop(constants.LINK_RATES_HINT, None)
    holder_hint = hints.encode_holders(holders)
    if holder_hint:
        scheduler_hints[constants.HOLDERS_HINT] = holder_hint
    if link_rates:
        scheduler_hints[constants.LINK_RATES_HINT] = (
            hints.encode_link_rates(link_rates))
    spec.scheduler_hints = scheduler_hints
    return spec


def schedule_redirect(
        context: Any, instance: Any, request_spec: Any, migration: Any,
        exclude_hosts: Iterable[str], *, keep_claim: bool,
        holders: Iterable[str] = (),
        link_rates: Mapping[str, float] | None = None,
        query_client: Any = None, report_client: Any = None,
        require_agent: bool = True,
) -> RedirectTarget:
    """Choose a new destination for a running live migration.

    :param context: a ``nova.context.RequestContext`` (admin).
    :param instance: the migrating ``objects.Instance``.
    :param request_spec: its ``objects.RequestSpec``
        (``RequestSpec.get_by_instance_uuid``); not modified.
    :param migration: the running ``objects.Migration``.
    :param exclude_hosts: hosts never to choose besides the source and the
        current destination, which are always ignored.
    :param keep_claim: keep the scheduler's claim on the new node for the
        instance consumer (see the module docstring for who releases it).
    :param holders: hosts whose agent still stores pages of the guest;
        ``DCMigrateWeigher`` prefers them if they are not ignored.
    :param link_rates: measured rates from the source by host, for
        ``DCMigrateWeigher``.
    :param query_client: scheduler client; ``SchedulerQueryClient()`` if
        None.
    :param report_client: placement client; the process's report client
        singleton if None.
    :param require_agent: only hosts reporting
        :data:`~.constants.AGENT_TRAIT` qualify (False for a source that
        does not send the stream through the agents).
    :raises NoValidRedirectTarget: when the scheduler finds no host. No
        claim is left behind.
    :raises ValueError: for a malformed holder name or link rate.
    :raises Exception: other failures propagate unchanged (e.g.
        ``oslo_messaging.MessagingTimeout`` or ``RemoteError`` from the
        scheduler RPC, ``AllocationUpdateFailed`` from placement); the
        scheduler claims nothing when it fails.
    :returns: the chosen host, node and claim state.
    """
    ignore = ignored_hosts(instance, migration, exclude_hosts)
    spec = _request_spec_for_redirect(
        context, instance, request_spec, migration, ignore, holders,
        link_rates, require_agent)
    if query_client is None:
        query_client = scheduler_query.SchedulerQueryClient()
    LOG.info("Asking the scheduler for a new destination of live "
             "migration %(migration)s, ignoring %(ignore)s",
             {"migration": migration.uuid, "ignore": ignore},
             instance=instance)
    try:
        selection = query_client.select_destinations(
            context, spec, [instance.uuid], return_objects=True,
            return_alternates=False)[0][0]
    except nova_exception.NoValidHost as err:
        raise exception.NoValidRedirectTarget(
            instance=instance.uuid, migration=migration.uuid,
            reason=err.format_message() or "no valid host was found",
            ignored_hosts=", ".join(ignore),
            trait=constants.AGENT_TRAIT if require_agent else "none"
        ) from err

    claimed = True
    try:
        scheduler_utils.fill_provider_mapping(spec, selection)
        target = RedirectTarget(
            host=selection.service_host, nodename=selection.nodename,
            compute_node_uuid=selection.compute_node_uuid,
            limits=selection.limits,
            provider_mapping=dict(spec.get_request_group_mapping() or {}),
            claimed=True)
    except Exception:
        with excutils.save_and_reraise_exception():
            _release(context, instance, selection.compute_node_uuid,
                     report_client)
    if not keep_claim:
        release_claim(context, instance, target, report_client)
        claimed = False
    LOG.info("Scheduler chose %(host)s (%(node)s) for live migration "
             "%(migration)s; claim %(state)s",
             {"host": target.host, "node": target.nodename,
              "migration": migration.uuid,
              "state": "kept" if claimed else "released"},
             instance=instance)
    return dataclasses.replace(target, claimed=claimed)


def select_new_destination(
        context: Any, instance: Any, request_spec: Any, migration: Any,
        exclude_hosts: set[str], *, holders: Iterable[str] = (),
        link_rates: Mapping[str, float] | None = None,
) -> tuple[str, str]:
    """Return ``(host, nodename)`` for redirecting a running migration.

    :func:`schedule_redirect` with ``keep_claim=False``: the scheduler's
    claim is released before returning, so placement is unchanged and the
    caller claims the host itself.

    :raises NoValidRedirectTarget: when no host qualifies.
    :returns: the new destination's service host and node name.
    """
    target = schedule_redirect(
        context, instance, request_spec, migration, exclude_hosts,
        keep_claim=False, holders=holders, link_rates=link_rates)
    return target.host, target.nodename


def _release(context: Any, instance: Any, compute_node_uuid: str,
             report_client: Any) -> None:
    if report_client is None:
        report_client = scheduler_report.report_client_singleton()
    report_client.remove_provider_tree_from_instance_allocation(
        context, instance.uuid, compute_node_uuid)


def release_claim(context: Any, instance: Any, target: RedirectTarget,
                  report_client: Any = None) -> None:
    """Remove the new node's resources from the instance consumer.

    Undoes the claim of :func:`schedule_redirect` (``keep_claim=True``)
    when the redirect to ``target`` is abandoned; allocations on other
    providers, such as the current destination's, stay.

    :param report_client: placement client; the singleton if None.
    """
    _release(context, instance, target.compute_node_uuid, report_client)


def destination_passes(
        context: Any, instance: Any, request_spec: Any, migration: Any,
        host: str, node: str, *, require_agent: bool = True,
        query_client: Any = None) -> bool:
    """Whether a running migration's destination still passes the filters.

    The instance's request spec, prepared as for a re-pick, is sent to
    ``select_destinations`` restricted to ``host``/``node``
    (``requested_destination``), ignoring only the source. The instance
    consumer already holds that host during the live migration, so the
    scheduler's claim of it leaves the allocation unchanged (Nova's
    ``claim_resources`` keeps providers the consumer already uses) and
    nothing has to be released. Placement counts that existing claim as
    used: a destination without room for a second copy of the instance
    does not pass.

    :raises Exception: scheduler RPC or placement failures, unchanged.
    :returns: False when the scheduler finds no valid host.
    """
    ignore = sorted({h for h in (instance.host, migration.source_compute)
                     if h and h != host})
    spec = _request_spec_for_redirect(
        context, instance, request_spec, migration, ignore, (), None,
        require_agent)
    spec.requested_destination.host = host
    spec.requested_destination.node = node
    if query_client is None:
        query_client = scheduler_query.SchedulerQueryClient()
    try:
        selection = query_client.select_destinations(
            context, spec, [instance.uuid], return_objects=True,
            return_alternates=False)[0][0]
    except nova_exception.NoValidHost:
        return False
    return bool(selection.service_host == host)
