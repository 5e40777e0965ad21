"""The API's compute RPC client on oslo.messaging's in-memory transport.

A real RPC server with a stand-in endpoint (the real one lives inside
nova-compute: ``tests/functional/nova/test_api.py``) checks the wire:
exchange ``nova``, topic ``compute``, namespace ``dcmigrate_compute``,
server = the source host, version 1.1 and its cap, the arguments.
"""

from __future__ import annotations

from typing import Any

from oslo_config import cfg
from oslo_context import context as oslo_context
import oslo_messaging as messaging
import pytest

from nova_dcmigrate.api import compute_rpc
from nova_dcmigrate.compute import exception as redirect_exception
from nova_dcmigrate.conf import api as api_conf


class Endpoint:
    target = messaging.Target(namespace="dcmigrate_compute", version="1.1")

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, dict[str, Any]]] = []

    def redirect_live_migration(self, ctxt: Any, **kwargs: Any) -> Any:
        self.calls.append(("redirect_live_migration", ctxt, kwargs))
        if kwargs["host"] == "src":
            raise redirect_exception.InvalidRedirectTarget(
                migration="m", host="src", reason="it is the source")
        return {"id": "r1"}

    def list_redirects(self, ctxt: Any, **kwargs: Any) -> Any:
        self.calls.append(("list_redirects", ctxt, kwargs))
        return [{"id": "r1"}]


@pytest.fixture
def bus():
    conf = cfg.ConfigOpts()
    api_conf.register_opts(conf)
    conf([])
    transport = compute_rpc.get_transport(conf, url="fake:/")
    endpoint = Endpoint()
    server = messaging.get_rpc_server(
        transport, messaging.Target(topic="compute", server="src",
                                    exchange="nova"),
        [endpoint], executor="threading")
    server.start()
    yield conf, transport, endpoint
    server.stop()
    server.wait()
    transport.cleanup()


def _ctxt():
    return oslo_context.RequestContext(user_id="u1", project_id="p1",
                                       roles=["admin"], request_id="req-1")


def test_redirect_wire_format(bus):
    conf, transport, endpoint = bus
    client = compute_rpc.ComputeClient(conf, transport=transport)
    assert client.redirect(_ctxt(), "src", "srv", "mig", "dest2", "why",
                           "user:u1") == {"id": "r1"}
    name, ctxt, kwargs = endpoint.calls[0]
    assert name == "redirect_live_migration"
    assert (ctxt["user_id"], ctxt["project_id"], ctxt["is_admin"],
            ctxt["request_id"], ctxt["auth_token"]) == (
        "u1", "p1", True, "req-1", None)
    assert kwargs["instance"]["nova_object.name"] == "Instance"
    assert kwargs["instance"]["nova_object.data"] == {"uuid": "srv"}
    assert kwargs["migration"]["nova_object.data"] == {"uuid": "mig"}
    assert (kwargs["host"], kwargs["reason"], kwargs["requested_by"]) == (
        "dest2", "why", "user:u1")
    assert client.list(_ctxt(), "src", "srv") == [{"id": "r1"}]


def test_refusals_are_rebuilt(bus):
    conf, transport, _ = bus
    client = compute_rpc.ComputeClient(conf, transport=transport)
    err = pytest.raises(redirect_exception.InvalidRedirectTarget,
                        client.redirect, _ctxt(), "src", "srv", "mig",
                        "src", None, "user:u1").value
    assert err.kwargs["reason"] == "it is the source"


def test_version_cap(bus):
    conf, transport, _ = bus
    conf.set_override("rpc_version_cap", "1.0", "dcmigrate_compute")
    client = compute_rpc.ComputeClient(conf, transport=transport)
    with pytest.raises(messaging.RPCVersionCapError):
        client.list(_ctxt(), "src", "srv")


def test_no_compute_answers(bus):
    conf, transport, _ = bus
    conf.set_override("compute_rpc_timeout", 1, "api")
    client = compute_rpc.ComputeClient(conf, transport=transport)
    with pytest.raises(messaging.MessagingTimeout):
        client.list(_ctxt(), "elsewhere", "srv")


def test_the_api_transport_uses_novas_exchange():
    conf = cfg.ConfigOpts()
    api_conf.register_opts(conf)
    conf([])
    transport = compute_rpc.get_transport(conf)
    try:
        assert conf.control_exchange == "nova"
    finally:
        transport.cleanup()
