"""Registering an option group the same way for every group we own."""

from __future__ import annotations

from collections.abc import Sequence

from oslo_config import cfg


def register(conf: cfg.ConfigOpts, group: cfg.OptGroup,
             opts: Sequence[cfg.Opt]) -> None:
    """Register ``opts`` under a copy of ``group`` on ``conf``.

    A fresh OptGroup per ConfigOpts: oslo.config keeps overrides on the
    group object, so sharing the module's one would leak them between
    configs (tests build many).
    """
    copy = cfg.OptGroup(group.name, title=group.title, help=group.help)
    conf.register_group(copy)
    conf.register_opts(opts, group=copy)
