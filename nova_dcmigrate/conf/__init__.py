"""All nova-dcmigrate options, registered on import (masakari style)."""

from __future__ import annotations

from oslo_config import cfg

from nova_dcmigrate.conf import agent

CONF = cfg.CONF

agent.register_opts(CONF)
