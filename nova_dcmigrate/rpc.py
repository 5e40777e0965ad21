"""oslo.messaging plumbing shared by every nova-dcmigrate service."""

from __future__ import annotations

from typing import Any

from oslo_config import cfg
import oslo_messaging as messaging

ALLOWED_EXMODS = [
    "nova_dcmigrate.exception",
    "nova_dcmigrate.agent.exception",
    "nova_dcmigrate.stream.exception",
]


def _register_tracing_opts(conf: cfg.ConfigOpts) -> None:
    # oslo.messaging 18.x registers its tracing and metrics options on the
    # global CONF only, but reads them from the transport's conf: a private
    # ConfigOpts (lab controller, tests) needs them too.
    if conf is cfg.CONF:
        return
    for group in ("oslo_messaging_tracing", "oslo_messaging_metrics"):
        if group in conf:
            continue
        try:
            global_group = cfg.CONF[group]
        except cfg.NoSuchOptError:
            continue
        opts = [cfg.CONF._get_opt_info(name, group)["opt"]
                for name in global_group]
        conf.register_opts(opts, group=group)


def get_transport(conf: cfg.ConfigOpts,
                  url: str | None = None) -> messaging.RPCTransport:
    _register_tracing_opts(conf)
    return messaging.get_rpc_transport(conf, url=url,
                                       allowed_remote_exmods=ALLOWED_EXMODS)


def get_server(transport: messaging.RPCTransport, target: messaging.Target,
               endpoints: list[Any]) -> messaging.RPCServer:
    # Only methods marked with @messaging.expose are callable.
    return messaging.get_rpc_server(
        transport, target, endpoints,
        access_policy=messaging.ExplicitRPCAccessPolicy)


def get_client(transport: messaging.RPCTransport, target: messaging.Target,
               version_cap: str | None = None,
               timeout: float | None = None) -> messaging.RPCClient:
    return messaging.get_rpc_client(transport, target,
                                    version_cap=version_cap, timeout=timeout)
