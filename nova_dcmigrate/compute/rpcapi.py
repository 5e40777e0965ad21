"""Client side of the ``dcmigrate_compute`` RPC API.

The API is served by every nova-compute that runs ``DCMigrateLibvirtDriver``
(:class:`nova_dcmigrate.compute.manager.RedirectEndpoint`), on Nova's own
``compute`` topic and server (the compute host), in its own target
namespace, so it never collides with Nova's compute RPC API. Requests go to
the **source** host of the migration, which runs the libvirt job.

API version history:

* 1.0 - Initial version: redirect_live_migration, get_redirect_status.
* 1.1 - redirect_live_migration takes ``reason`` and ``requested_by`` and,
  when ``requested_by`` is given, returns the redirect record; new
  list_redirects. Only ``uuid`` of ``instance``/``migration`` is read (the
  dcmigrate-api service, which does not import Nova, sends objects holding
  just that).
"""

from __future__ import annotations

from typing import Any
from typing import cast

from nova.compute import rpcapi as nova_compute_rpcapi
from nova.objects import base as objects_base
from nova import rpc as nova_rpc
from oslo_config import cfg
import oslo_messaging as messaging

import nova_dcmigrate.conf

CONF = nova_dcmigrate.conf.CONF

#: Target namespace of the endpoint; Nova's compute manager has none.
NAMESPACE = "dcmigrate_compute"

#: Modules whose exceptions a caller rebuilds from RPC replies.
EXCEPTION_MODULES = (
    "nova_dcmigrate.compute.exception",
    "nova_dcmigrate.scheduler.exception",
)


def register_exception_modules() -> None:
    """Let Nova's transport rebuild our errors from RPC replies.

    Must run before ``nova.rpc.init`` creates the transport (the allowed
    modules are fixed then); otherwise errors arrive as
    ``oslo_messaging.RemoteError`` carrying the class name and message.
    """
    nova_rpc.add_extra_exmods(*EXCEPTION_MODULES)


class ComputeRedirectAPI:
    """Versioned client of the redirect endpoint on a source compute."""

    RPC_API_VERSION = "1.1"

    def __init__(self, conf: cfg.ConfigOpts | None = None) -> None:
        """Build the client on Nova's RPC transport (``nova.rpc.init``).

        :param conf: where ``[dcmigrate_compute] rpc_version_cap`` is read;
            the global config if None.
        """
        conf = conf if conf is not None else CONF
        target = messaging.Target(topic=nova_compute_rpcapi.RPC_TOPIC,
                                  namespace=NAMESPACE,
                                  version=self.RPC_API_VERSION)
        self.client = nova_rpc.get_client(
            target, version_cap=conf.dcmigrate_compute.rpc_version_cap,
            serializer=objects_base.NovaObjectSerializer())

    def _prepare(self, host: str, version: str) -> Any:
        return self.client.prepare(server=host, version=version)

    def redirect_live_migration(self, ctxt: Any, instance: Any,
                                migration: Any, host: str | None = None,
                                reason: str | None = None,
                                requested_by: str | None = None
                                ) -> dict[str, Any]:
        """Ask the source to redirect a running live migration.

        The source validates the request and returns at once; the redirect
        itself runs in the source's migration monitor (follow it with
        :meth:`get_redirect_status`).

        :param ctxt: a ``nova.context.RequestContext`` (admin).
        :param instance: the migrating ``objects.Instance``.
        :param migration: its running ``objects.Migration``; the request is
            sent to ``migration.source_compute``.
        :param host: the new destination, or None to let nova-scheduler
            choose one.
        :param reason: free text kept in the redirect record (1.1).
        :param requested_by: ``user:<id>`` or ``trigger:<name>`` (1.1).
        :raises RedirectError: (a subclass) when the request is refused;
            nothing changed.
        :raises oslo_messaging.RPCVersionCapError: ``reason`` or
            ``requested_by`` given while ``rpc_version_cap`` is 1.0.
        :returns: with ``reason`` or ``requested_by`` (1.1): the redirect
            record (``RedirectRecord.to_dict()``); without (1.0): the
            redirect status right after the request was queued.
        """
        if reason is None and requested_by is None:
            cctxt = self._prepare(migration.source_compute, "1.0")
            return cast(dict[str, Any], cctxt.call(
                ctxt, "redirect_live_migration", instance=instance,
                migration=migration, host=host))
        cctxt = self._prepare(migration.source_compute, "1.1")
        return cast(dict[str, Any], cctxt.call(
            ctxt, "redirect_live_migration", instance=instance,
            migration=migration, host=host, reason=reason,
            requested_by=requested_by or "user:%s" % ctxt.user_id))

    def list_redirects(self, ctxt: Any, instance: Any, source: str,
                       migration: Any = None) -> list[dict[str, Any]]:
        """The instance's redirect records known to ``source`` (1.1),
        newest first."""
        cctxt = self._prepare(source, "1.1")
        return cast(list[dict[str, Any]], cctxt.call(
            ctxt, "list_redirects", instance=instance, migration=migration))

    def get_redirect_status(self, ctxt: Any, instance: Any,
                            migration: Any) -> dict[str, Any]:
        """Return where a live migration stands with respect to redirects.

        :raises UnknownLiveMigration: when the source knows no live
            migration of the instance (running or recently finished).
        :returns: a dict, see
            :meth:`nova_dcmigrate.compute.redirect.LiveMigrationRun.status`.
        """
        cctxt = self._prepare(migration.source_compute, "1.0")
        return cast(dict[str, Any], cctxt.call(
            ctxt, "get_redirect_status", instance=instance,
            migration=migration))
