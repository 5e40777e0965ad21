"""Entry point for oslo-config-generator: every option group we own."""

from __future__ import annotations

from oslo_config import cfg

from nova_dcmigrate.conf import agent
from nova_dcmigrate.conf import api
from nova_dcmigrate.conf import auto
from nova_dcmigrate.conf import compute
from nova_dcmigrate.conf import scheduler

_MODULES = (agent, auto, compute, scheduler)


def list_opts() -> list[tuple[cfg.OptGroup, list[cfg.Opt]]]:
    result: list[tuple[cfg.OptGroup, list[cfg.Opt]]] = []
    for module in _MODULES:
        for group, opts in module.list_opts().items():
            result.append((group, list(opts)))
    return result


def list_api_opts() -> list[tuple[cfg.OptGroup | str, list[cfg.Opt]]]:
    """Options of dcmigrate-api (generator namespace
    ``nova_dcmigrate.api``): its own groups and [dcmigrate_compute]."""
    result: list[tuple[cfg.OptGroup | str, list[cfg.Opt]]] = []
    for group, opts in api.list_opts().items():
        result.append((group, list(opts)))
    return result
