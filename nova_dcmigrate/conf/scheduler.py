"""Options of the redirect scheduler hook (group ``[dcmigrate_scheduler]``).

Read by ``nova_dcmigrate.scheduler.weights.DCMigrateWeigher`` inside
nova-scheduler; the weigher itself is enabled through Nova's own
``[filter_scheduler] weight_classes``.
"""

from __future__ import annotations

from oslo_config import cfg

from nova_dcmigrate.conf import groups

GROUP = cfg.OptGroup(
    "dcmigrate_scheduler",
    title="dcmigrate scheduler options",
    help="Weights that DCMigrateWeigher gives to the hosts a redirected "
         "live migration can move to. Each component scores a host between "
         "0 and 1 and is multiplied by its multiplier, so a multiplier "
         "counts as much as the multiplier of one of Nova's own weighers "
         "(RAMWeigher, CPUWeigher, ... default to 1.0). A host aggregate "
         "can override a multiplier for its hosts with metadata of the "
         "same name prefixed by 'dcmigrate_', for example "
         "dcmigrate_holder_weight_multiplier=10.")

OPTS: list[cfg.Opt] = [
    cfg.FloatOpt(
        "holder_weight_multiplier",
        default=5.0,
        help="Multiplier for holding pages of the migrating guest. A host "
             "named in the 'dcmigrate_holders' scheduler hint (an earlier "
             "destination whose dcmigrate-agent still stores pages of the "
             "guest) scores 1, any other host 0. The default outweighs the "
             "sum of Nova's RAM, CPU, disk and I/O weighers at their "
             "default multipliers, because a holder does not have to "
             "receive the pages it stores again. Negative values make "
             "holders less likely; 0 disables this component.\n\n"
             "Services that use this: nova-scheduler (with DCMigrateWeigher "
             "in [filter_scheduler] weight_classes).\n\n"
             "Related options: link_rate_weight_multiplier, "
             "load_weight_multiplier."),
    cfg.FloatOpt(
        "link_rate_weight_multiplier",
        default=2.0,
        help="Multiplier for the measured link rate from the migration "
             "source. A host scores its rate divided by the best rate in "
             "the 'dcmigrate_link_rates' scheduler hint; a host without a "
             "measured rate scores 0. Negative values prefer slow links; "
             "0 disables this component.\n\n"
             "Services that use this: nova-scheduler (with DCMigrateWeigher "
             "in [filter_scheduler] weight_classes).\n\n"
             "Related options: holder_weight_multiplier, "
             "load_weight_multiplier."),
    cfg.FloatOpt(
        "load_weight_multiplier",
        default=1.0,
        help="Multiplier for a lightly loaded host. A host scores 1 minus "
             "the mean of its I/O load (in-progress I/O heavy operations, "
             "such as migrations, divided by [filter_scheduler] "
             "max_io_ops_per_host) and its vCPU load (vCPUs allocated "
             "divided by vCPUs times cpu_allocation_ratio), each capped at "
             "1: an idle host scores 1, a host at both limits 0. A busy "
             "destination slows the incoming stream and the guest after "
             "the switchover. Negative values prefer busy hosts; 0 "
             "disables this component.\n\n"
             "Services that use this: nova-scheduler (with DCMigrateWeigher "
             "in [filter_scheduler] weight_classes).\n\n"
             "Related options: [filter_scheduler] max_io_ops_per_host, "
             "holder_weight_multiplier, link_rate_weight_multiplier."),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    """Register ``[dcmigrate_scheduler]`` on ``conf``."""
    groups.register(conf, GROUP, OPTS)


def list_opts() -> dict[cfg.OptGroup, list[cfg.Opt]]:
    """Return the options for oslo-config-generator."""
    return {GROUP: OPTS}
