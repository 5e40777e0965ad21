"""``[dcmigrate_compute]`` options and their place in the generator list."""

from __future__ import annotations

from oslo_config import cfg
import pytest

from nova_dcmigrate.conf import compute
from nova_dcmigrate.conf import opts


def test_listed_for_the_config_generator_with_help():
    groups = {g.name: o for g, o in opts.list_opts()}
    listed = groups["dcmigrate_compute"]
    assert {o.name for o in listed} == {o.name for o in compute.OPTS}
    assert all(o.help for o in listed)


def test_defaults_and_bounds():
    conf = cfg.ConfigOpts()
    compute.register_opts(conf)
    conf([])
    group = conf.dcmigrate_compute
    assert (group.rpc_version_cap, group.attempt_stop_timeout,
            group.finished_status_entries) == (None, 60, 100)
    with pytest.raises(ValueError):
        conf.set_override("attempt_stop_timeout", 0, "dcmigrate_compute")


def test_transport_defaults_to_agents():
    conf = cfg.ConfigOpts()
    compute.register_opts(conf)
    conf([])
    group = conf.dcmigrate_compute
    assert (group.transport, group.agent_transport_url,
            group.agent_rpc_timeout, group.agent_addresses,
            group.agent_port_min, group.agent_port_max) == (
        "agents", None, 60, {}, 49152, 49215)
    with pytest.raises(ValueError):
        conf.set_override("transport", "tunnel", "dcmigrate_compute")


def test_agent_ping_options():
    conf = cfg.ConfigOpts()
    compute.register_opts(conf)
    conf([])
    group = conf.dcmigrate_compute
    assert (group.agent_ping_timeout, group.agent_check_interval) == (5, 60)
    conf.set_override("agent_check_interval", 0, "dcmigrate_compute")
    with pytest.raises(ValueError):
        conf.set_override("agent_ping_timeout", 0, "dcmigrate_compute")
