"""The ``dcmigrate_compute`` RPC client of dcmigrate-api (no Nova import).

The same calls as :class:`nova_dcmigrate.compute.rpcapi.ComputeRedirectAPI`
on the same wire: topic ``compute``, namespace ``dcmigrate_compute``,
server = the migration's source host, exchange ``nova`` (Nova's
``control_exchange``), version 1.1 capped by ``[dcmigrate_compute]
rpc_version_cap``. Instances and migrations go as minimal versioned-object
primitives holding only their UUID (:func:`nova_object`), the request
context as the dict Nova's ``RequestContext.from_dict`` reads, so the API
process needs neither Nova nor its object registry. (Plain UUID strings
would not do: nova-compute's RPC task tracking reads ``instance.uuid``.)
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


def get_transport(conf: cfg.ConfigOpts,
                  url: str | None = None) -> messaging.RPCTransport:
    """Nova's bus, as Nova's services see it (exchange ``nova``).

    :param url: instead of ``[DEFAULT] transport_url``.
    """
    messaging.set_transport_defaults(control_exchange="nova")
    # The API's ConfigOpts is its own: oslo.messaging's tracing options
    # are registered on the global one only.
    rpc._register_tracing_opts(conf)
    return messaging.get_rpc_transport(
        conf, url=url, allowed_remote_exmods=EXCEPTION_MODULES)


class _ContextSerializer(messaging.NoOpSerializer):  # type: ignore[misc]
    """Sends the context as Nova's RequestContext.to_dict would."""

    def serialize_context(self, ctxt: Any) -> dict[str, Any]:
        return cast(dict[str, Any], ctxt)


#: Versions sent: the oldest of each object's current major version, which
#: any Nova of that major accepts (oslo.versionedobjects compatibility).
OBJECT_VERSIONS = {"Instance": "2.0", "Migration": "1.0"}


def nova_object(name: str, uuid: str) -> dict[str, Any]:
    """A Nova object holding only ``uuid``, in oslo.versionedobjects'
    wire form; the compute loads anything else it needs by UUID."""
    return {"nova_object.name": name, "nova_object.namespace": "nova",
            "nova_object.version": OBJECT_VERSIONS[name],
            "nova_object.data": {"uuid": uuid},
            "nova_object.changes": ["uuid"]}


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
            instance=nova_object("Instance", server_id),
            migration=nova_object("Migration", migration_id), host=host,
            reason=reason, requested_by=requested_by))

    def list(self, ctxt: oslo_context.RequestContext, source: str,
             server_id: str) -> list[dict[str, Any]]:
        """Every redirect record ``source`` keeps of the server."""
        cctxt = self._client.prepare(server=source, version="1.1")
        return cast(list[dict[str, Any]], cctxt.call(
            nova_context(ctxt), "list_redirects",
            instance=nova_object("Instance", server_id)))
