"""The agent RPC meets nova-compute on Nova's exchange.

nova-compute sets ``control_exchange = nova``; a standalone agent left at
oslo.messaging's default ``openstack`` listened where no compute sent
(found by the lab cloud).  Both Targets pin the exchange, so neither
process's ``control_exchange`` matters.
"""

from unittest import mock

from oslo_config import cfg
import oslo_messaging as messaging

from nova_dcmigrate.agent import rpcapi
from nova_dcmigrate.agent import service


def test_client_target_pins_nova_exchange():
    transport = messaging.get_rpc_transport(cfg.ConfigOpts(),
                                            url="fake:/")
    api = rpcapi.AgentAPI(transport)
    assert api.client.target.exchange == "nova"
    assert rpcapi.EXCHANGE == "nova"


def test_server_target_pins_nova_exchange():
    conf = cfg.ConfigOpts()
    seen = {}

    def get_server(transport, target, endpoints):
        seen["target"] = target
        return mock.Mock()

    with mock.patch.object(service.rpc, "get_server", get_server), \
            mock.patch.object(service.rpc, "get_transport"), \
            mock.patch.object(service, "AgentManager"):
        conf.register_opts([cfg.StrOpt("host")], group="dcmigrate_agent")
        conf([], default_config_files=[])
        conf.set_override("host", "hosta", group="dcmigrate_agent")
        service.AgentService(conf)
    assert seen["target"].exchange == "nova"
    assert seen["target"].server == "hosta"


def _api_calls(cap):
    transport = messaging.get_rpc_transport(cfg.ConfigOpts(),
                                            url="fake:/")
    api = rpcapi.AgentAPI(transport, version_cap=cap)
    calls = []
    api._call = lambda host, method, version="1.0", **kw: \
        calls.append((method, version, kw)) or {}
    return api, calls


def test_download_rate_only_to_agents_of_1_5():
    api, calls = _api_calls(None)
    api.prepare_destination("h", "m", "s", 1, download_rate=125e6)
    api.prepare_destination("h", "m", "s", 1)
    assert calls[0][1] == "1.5" and calls[0][2]["download_rate"] == 125e6
    assert calls[1][1] == "1.3" and "download_rate" not in calls[1][2]
    # An older agent plans without the hint.
    api, calls = _api_calls("1.4")
    api.prepare_destination("h", "m", "s", 1, download_rate=125e6)
    assert calls[0][1] == "1.3" and "download_rate" not in calls[0][2]
