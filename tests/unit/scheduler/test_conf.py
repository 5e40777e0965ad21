"""[dcmigrate_scheduler] options: registration, help, config generator."""

from __future__ import annotations

from oslo_config import cfg
import pytest

from nova_dcmigrate import conf
from nova_dcmigrate.conf import opts
from nova_dcmigrate.conf import scheduler

NAMES = {"holder_weight_multiplier", "link_rate_weight_multiplier",
         "load_weight_multiplier"}


def test_options_and_defaults():
    c = cfg.ConfigOpts()
    scheduler.register_opts(c)
    c([])
    group = c.dcmigrate_scheduler
    assert {o.name for o in scheduler.OPTS} == NAMES
    assert (group.holder_weight_multiplier,
            group.link_rate_weight_multiplier,
            group.load_weight_multiplier) == (5.0, 2.0, 1.0)


def test_values_from_a_config_file(tmp_path):
    path = tmp_path / "nova.conf"
    path.write_text("[dcmigrate_scheduler]\n"
                    "holder_weight_multiplier = -2.5\n"
                    "load_weight_multiplier = 0\n")
    c = cfg.ConfigOpts()
    scheduler.register_opts(c)
    c(["--config-file", str(path)])
    assert c.dcmigrate_scheduler.holder_weight_multiplier == -2.5
    assert c.dcmigrate_scheduler.load_weight_multiplier == 0.0
    assert c.dcmigrate_scheduler.link_rate_weight_multiplier == 2.0


def test_not_a_number_is_refused():
    c = cfg.ConfigOpts()
    scheduler.register_opts(c)
    c([])
    with pytest.raises(ValueError):
        c.set_override("holder_weight_multiplier", "lots",
                       "dcmigrate_scheduler")


def test_registered_on_the_global_conf_on_import():
    # nova-scheduler reads them from Nova's CONF (the same cfg.CONF).
    assert conf.CONF is cfg.CONF
    assert conf.CONF.dcmigrate_scheduler.holder_weight_multiplier == 5.0


def test_list_opts_has_the_group_with_help():
    groups = {g.name: (g, o) for g, o in opts.list_opts()}
    group, options = groups["dcmigrate_scheduler"]
    assert group.help
    assert {o.name for o in options} == NAMES
    for o in options:
        assert "Services that use this: nova-scheduler" in o.help
        assert "Related options" in o.help
