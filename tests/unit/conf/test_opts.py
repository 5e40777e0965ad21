"""Option registration and the oslo-config-generator entry point."""

from __future__ import annotations

from importlib import metadata

from oslo_config import cfg
import pytest

from nova_dcmigrate.conf import agent
from nova_dcmigrate.conf import opts


def test_entry_point_resolves_to_our_list_opts():
    eps = [ep for ep in metadata.entry_points(group="oslo.config.opts")
           if ep.name == "nova_dcmigrate"]
    assert len(eps) == 1
    assert eps[0].load() is opts.list_opts


def test_list_opts_covers_every_agent_option_with_help():
    groups = {g.name: o for g, o in opts.list_opts()}
    assert "dcmigrate_agent" in groups
    names = {o.name for o in groups["dcmigrate_agent"]}
    assert names == {o.name for o in agent.OPTS}
    assert all(o.help for o in groups["dcmigrate_agent"])


def test_register_and_bounds():
    conf = cfg.ConfigOpts()
    agent.register_opts(conf)
    conf([])
    assert conf.dcmigrate_agent.socket_dir == "/run/dcmigrate"
    assert conf.dcmigrate_agent.peer_tls is False
    assert conf.dcmigrate_agent.max_peer_connections == 64
    with pytest.raises(ValueError):
        conf.set_override("max_peer_connections", 0, "dcmigrate_agent")
    assert conf.dcmigrate_agent.peer_port == 16590
    with pytest.raises(ValueError, match="16384"):   # min=16 KiB
        conf.set_override("chunk_size", 4096, "dcmigrate_agent")
