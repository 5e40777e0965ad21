"""The ``dcmigrate_compute`` RPC endpoint, served inside nova-compute.

Nova has no plug-in point for compute RPC methods, but its compute manager
serves every object in ``additional_endpoints`` on the ``compute`` and
``compute-alt`` topics (``nova.service.Service.start``), each in its own
target namespace. ``DCMigrateLibvirtDriver`` appends a
:class:`RedirectEndpoint` there when nova-compute loads it, so each host
running the driver answers the redirect API
(:mod:`nova_dcmigrate.compute.rpcapi`).
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
                                migration: Any,
                                host: str | None = None) -> dict[str, Any]:
        """Queue a redirect of the instance's running live migration.

        :raises RedirectError: (a subclass) if the request is refused.
        :returns: the run's status once the request is queued.
        """
        run = self._driver.dcmigrate_runs.get(instance.uuid)
        if run is None:
            raise exception.UnknownLiveMigration(
                instance=instance.uuid, host=self._driver.dcmigrate_host)
        try:
            # The caller's copy may be stale: decide on the record.
            current = objects.Migration.get_by_uuid(context, migration.uuid)
        except nova_exception.MigrationNotFound as err:
            raise exception.UnknownMigration(
                migration=migration.uuid, instance=instance.uuid,
                running=run.migration.uuid) from err
        with run.lock:
            run.check_redirectable(current, host)
        redirect.check_supported_instance(context, instance, current)
        if host is not None:
            self._driver.dcmigrate_redirector().check_host(context, run, host)
        with run.lock:
            # Checked again: another request may have won meanwhile.
            run.check_redirectable(current, host)
            run.request(host)
        LOG.info("Redirect of live migration %(migration)s from %(dest)s "
                 "to %(host)s requested", {
                     "migration": current.uuid, "dest": run.dest,
                     "host": host or "a host nova-scheduler picks"},
                 instance=instance)
        return run.status()

    @_expected
    def get_redirect_status(self, context: Any, instance: Any,
                            migration: Any = None) -> dict[str, Any]:
        """Return the redirect status of the instance's live migration.

        :raises UnknownLiveMigration: when this host neither runs nor
            recently finished a live migration of the instance.
        """
        run = self._driver.dcmigrate_runs.get(instance.uuid)
        if run is not None:
            return run.status()
        status = self._driver.dcmigrate_runs.finished_status(instance.uuid)
        if status is None or (migration is not None and
                              status["migration"] != migration.uuid):
            raise exception.UnknownLiveMigration(
                instance=instance.uuid, host=self._driver.dcmigrate_host)
        return status
