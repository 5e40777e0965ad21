"""Options of the compute side of redirects (group ``[dcmigrate_compute]``).

Read by ``DCMigrateLibvirtDriver`` inside nova-compute (the source of a
live migration runs the redirect) and by the redirect RPC client
(``nova_dcmigrate.compute.rpcapi``) wherever it runs.
"""

from __future__ import annotations

from oslo_config import cfg

GROUP = cfg.OptGroup(
    "dcmigrate_compute",
    title="dcmigrate compute options",
    help="How nova-compute services running DCMigrateLibvirtDriver "
         "redirect running live migrations.")

OPTS: list[cfg.Opt] = [
    cfg.StrOpt(
        "rpc_version_cap",
        help="Highest version of the dcmigrate_compute RPC API that the "
             "redirect client sends, e.g. '1.0'. Leave unset to send the "
             "newest version; set it to the oldest version any "
             "nova-compute runs while a rolling upgrade is under way.\n\n"
             "Services that use this: whatever sends redirects (the "
             "redirect API service, tests).\n\n"
             "Related options: none."),
    cfg.IntOpt(
        "attempt_stop_timeout",
        default=60,
        min=1,
        help="Seconds the source waits, after aborting the libvirt job to "
             "the old destination for a redirect, for that migration "
             "attempt to end before it gives up on the redirect and rolls "
             "the migration back to the source.\n\n"
             "Services that use this: nova-compute (migration source).\n\n"
             "Related options: none."),
    cfg.IntOpt(
        "finished_status_entries",
        default=100,
        min=0,
        help="How many finished live migrations a nova-compute keeps the "
             "redirect status of (get_redirect_status), oldest dropped "
             "first.\n\n"
             "Services that use this: nova-compute (migration source).\n\n"
             "Related options: none."),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    """Register ``[dcmigrate_compute]`` on ``conf``."""
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)


def list_opts() -> dict[cfg.OptGroup, list[cfg.Opt]]:
    """Return the options for oslo-config-generator."""
    return {GROUP: OPTS}
