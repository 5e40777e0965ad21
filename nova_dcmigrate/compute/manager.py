"""The ``dcmigrate_compute`` RPC endpoint, served inside nova-compute.

Nova has no plug-in point for compute RPC methods, but its compute manager
serves every object in ``additional_endpoints`` on the ``compute`` and
``compute-alt`` topics (``nova.service.Service.start``), each in its own
target namespace. ``DCMigrateLibvirtDriver`` appends a
:class:`RedirectEndpoint` there when nova-compute loads it, so each host
running the driver answers the redirect API
(:mod:`nova_dcmigrate.compute.rpcapi`).

``instance`` and ``migration`` arguments are Nova objects; the
dcmigrate-api service, which does not import Nova, sends objects holding
only their UUID (:mod:`nova_dcmigrate.api.compute_rpc`), so only
``uuid`` is read from them (strings are accepted too, for callers that
bypass nova-compute's RPC wrapper).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from typing import Protocol
from typing import TypeVar
from typing import cast

from nova import exception as nova_exception
from nova import objects
from oslo_log import log as logging
import oslo_messaging as messaging

from nova_dcmigrate.compute import exception
from nova_dcmigrate.compute import records
from nova_dcmigrate.compute import redirect
from nova_dcmigrate.compute import rpcapi
from nova_dcmigrate.compute import run as run_state

LOG = logging.getLogger(__name__)

_F = TypeVar("_F", bound=Callable[..., Any])

#: Refusals are answers, not server errors: oslo.messaging logs them at
#: DEBUG instead of ERROR with a traceback.
_expected = cast(Callable[[_F], _F],
                 messaging.expected_exceptions(exception.RedirectError))


class RedirectHost(Protocol):
    """What the endpoint needs from the service it runs in.

    The compute driver provides it and hands itself in when it registers
    the endpoint; nothing here knows which driver that is.
    """

    @property
    def dcmigrate_runs(self) -> run_state.Registry:
        """The live migrations this host runs as the source."""

    @property
    def dcmigrate_host(self) -> str:
        """This compute service's host name."""

    def dcmigrate_redirector(self) -> redirect.Redirector:
        """The redirect orchestrator bound to the compute manager."""


class RedirectEndpoint:
    """Validates redirect requests; the source's monitor acts on them.

    Nova's RPC server uses ``DefaultRPCAccessPolicy``: every public method
    of this class is callable remotely, so it has no other public method.
    """

    target = messaging.Target(namespace=rpcapi.NAMESPACE,
                              version=rpcapi.ComputeRedirectAPI.
                              RPC_API_VERSION)

    def __init__(self, driver: RedirectHost) -> None:
        self._driver = driver

    @_expected
    def redirect_live_migration(self, context: Any, instance: Any,
                                migration: Any, host: str | None = None,
                                reason: str | None = None,
                                requested_by: str | None = None
                                ) -> dict[str, Any]:
        """Queue a redirect of the instance's running live migration.

        :param reason: free text kept in the redirect record (1.1).
        :param requested_by: ``user:<id>`` or ``trigger:<name>`` (1.1);
            None: ``user:<the context's user>``.
        :raises RedirectError: (a subclass) if the request is refused.
        :returns: 1.1 callers (``requested_by`` given): the redirect record
            (``RedirectRecord.to_dict``); 1.0 callers: the run's status.
        """
        instance_uuid = _uuid(instance)
        migration_uuid = _uuid(migration)
        run = self._driver.dcmigrate_runs.get(instance_uuid)
        if run is None:
            raise exception.UnknownLiveMigration(
                instance=instance_uuid, host=self._driver.dcmigrate_host)
        try:
            # The caller's copy may be stale: decide on the record.
            current = objects.Migration.get_by_uuid(context, migration_uuid)
        except nova_exception.MigrationNotFound as err:
            raise exception.UnknownMigration(
                migration=migration_uuid, instance=instance_uuid,
                running=run.migration.uuid) from err
        with run.lock:
            run.check_redirectable(current, host)
        redirect.check_supported_instance(context, instance, current)
        if host is not None:
            self._driver.dcmigrate_redirector().check_host(context, run, host)
        with run.lock:
            # Checked again: another request may have won meanwhile.
            run.check_redirectable(current, host)
            record = run.request(
                host, reason=reason, context=context,
                requested_by=requested_by or records.user_requester(
                    getattr(context, "user_id", None)))
            # As queued: the monitor may take it as soon as the lock goes.
            answer = (run.status() if requested_by is None
                      else record.to_dict())
        LOG.info("Redirect %(id)s of live migration %(migration)s from "
                 "%(dest)s to %(host)s requested by %(by)s: %(reason)s", {
                     "id": record.id, "migration": current.uuid,
                     "dest": run.dest, "by": record.requested_by,
                     "host": host or "a host nova-scheduler picks",
                     "reason": reason or "no reason given"},
                 instance_uuid=instance_uuid)
        return answer

    @_expected
    def list_redirects(self, context: Any, instance: Any,
                       migration: Any = None) -> list[dict[str, Any]]:
        """The instance's redirect records known here, newest first (1.1).

        Records of running redirects carry their live progress. An
        instance this host never redirected has none (an empty list).
        """
        instance_uuid = _uuid(instance)
        migration_uuid = None if migration is None else _uuid(migration)
        found = self._driver.dcmigrate_runs.records(instance_uuid,
                                                    migration_uuid)
        return [record.to_dict() for record in found]

    @_expected
    def get_redirect_status(self, context: Any, instance: Any,
                            migration: Any = None) -> dict[str, Any]:
        """Return the redirect status of the instance's live migration.

        :raises UnknownLiveMigration: when this host neither runs nor
            recently finished a live migration of the instance.
        """
        instance_uuid = _uuid(instance)
        run = self._driver.dcmigrate_runs.get(instance_uuid)
        if run is not None:
            return run.status()
        status = self._driver.dcmigrate_runs.finished_status(instance_uuid)
        if status is None or (migration is not None and
                              status["migration"] != _uuid(migration)):
            raise exception.UnknownLiveMigration(
                instance=instance_uuid, host=self._driver.dcmigrate_host)
        return status


def _uuid(obj: Any) -> str:
    """The UUID of a Nova object sent over RPC, or the UUID sent instead."""
    return obj if isinstance(obj, str) else str(obj.uuid)
