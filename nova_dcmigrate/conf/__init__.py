"""All nova-dcmigrate options, registered on import (masakari style)."""

from __future__ import annotations

from oslo_config import cfg

from nova_dcmigrate.conf import agent
from nova_dcmigrate.conf import auto
from nova_dcmigrate.conf import compute
from nova_dcmigrate.conf import scheduler

CONF = cfg.CONF

agent.register_opts(CONF)
auto.register_opts(CONF)
compute.register_opts(CONF)
scheduler.register_opts(CONF)
