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
