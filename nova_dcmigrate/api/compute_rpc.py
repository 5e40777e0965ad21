"""The ``dcmigrate_compute`` RPC client of dcmigrate-api (no Nova import).

The same calls as :class:`nova_dcmigrate.compute.rpcapi.ComputeRedirectAPI`
on the same wire: topic ``compute``, namespace ``dcmigrate_compute``,
server = the migration's source host, exchange ``nova`` (Nova's
``control_exchange``), version 1.1 capped by ``[dcmigrate_compute]
rpc_version_cap``. Instances and migrations go as UUID strings (RPC 1.1),
the request context as the dict Nova's ``RequestContext.from_dict``
reads, so the API process needs neither Nova nor its object registry.
"""

from __future__ import annotations

from typing import Any
from typing import cast

from oslo_config import cfg
from oslo_context import context as oslo_context
import oslo_messaging as messaging

from nova_dcmigrate import rpc

TOPIC = "compute"
NAMESPACE = "dcmigrate_compute"
VERSION = "1.1"
#: Modules whose errors are rebuilt from replies (else RemoteError).
EXCEPTION_MODULES = [
    *rpc.ALLOWED_EXMODS,
    "nova_dcmigrate.compute.exception",
    "nova_dcmigrate.scheduler.exception",
]


def get_transport(conf: cfg.ConfigOpts) -> messaging.RPCTransport:
    """Nova's bus, as Nova's services see it (exchange ``nova``)."""
    messaging.set_transport_defaults(control_exchange="nova")
    return messaging.get_rpc_transport(
        conf, allowed_remote_exmods=EXCEPTION_MODULES)


class _ContextSerializer(messaging.NoOpSerializer):
    """Sends the context as Nova's RequestContext.to_dict would."""

    def serialize_context(self, ctxt: Any) -> dict[str, Any]:
        return cast(dict[str, Any], ctxt)


def nova_context(ctxt: oslo_context.RequestContext) -> dict[str, Any]:
    """The context dict sent to the source compute.

    The caller passed the API's policy; the source compute acts with admin
    rights (it claims, binds ports, asks the scheduler) under the caller's
    user, project and request id.
    """
    values = ctxt.to_dict()
    values.update({"user_id": ctxt.user_id, "project_id": ctxt.project_id,
                   "is_admin": True, "read_deleted": "no",
                   "auth_token": None})
    return values


class ComputeClient:
    """Calls the redirect endpoint of a source nova-compute."""

    def __init__(self, conf: cfg.ConfigOpts,
                 transport: messaging.RPCTransport | None = None) -> None:
        self._transport = transport or get_transport(conf)
        target = messaging.Target(topic=TOPIC, namespace=NAMESPACE,
                                  version=VERSION)
        self._client = messaging.get_rpc_client(
            self._transport, target,
            version_cap=conf.dcmigrate_compute.rpc_version_cap,
            serializer=_ContextSerializer(),
            timeout=conf.api.compute_rpc_timeout)

    def redirect(self, ctxt: oslo_context.RequestContext, source: str,
                 server_id: str, migration_id: str, host: str | None,
                 reason: str | None, requested_by: str) -> dict[str, Any]:
        """Queue the redirect; return its record."""
        cctxt = self._client.prepare(server=source, version="1.1")
        return cast(dict[str, Any], cctxt.call(
            nova_context(ctxt), "redirect_live_migration",
            instance=server_id, migration=migration_id, host=host,
            reason=reason, requested_by=requested_by))

    def list(self, ctxt: oslo_context.RequestContext, source: str,
             server_id: str) -> list[dict[str, Any]]:
        """Every redirect record ``source`` keeps of the server."""
        cctxt = self._client.prepare(server=source, version="1.1")
        return cast(list[dict[str, Any]], cctxt.call(
            nova_context(ctxt), "list_redirects", instance=server_id))
