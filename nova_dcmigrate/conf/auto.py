"""Options of automatic redirects (group ``[dcmigrate_auto]``).

Read by the redirect triggers (:mod:`nova_dcmigrate.triggers`) in the
migration monitor of each source nova-compute. With the defaults nothing
is enabled, so upgrading changes no running behaviour.
"""

from __future__ import annotations

from oslo_config import cfg

from nova_dcmigrate.conf import groups

GROUP = cfg.OptGroup(
    "dcmigrate_auto",
    title="dcmigrate automatic redirect options",
    help="Automatic redirects: while a live migration runs, the source "
         "nova-compute evaluates the enabled redirect triggers and, when "
         "one says the destination stopped being a good choice, redirects "
         "the migration to a host nova-scheduler re-picks. Every decision "
         "is logged, written as an instance action event, sent as a "
         "versioned notification and kept in the redirect records.")

_SERVICES = ("\n\nServices that use this: nova-compute (migration source, "
             "DCMigrateLibvirtDriver).")

OPTS: list[cfg.Opt] = [
    cfg.ListOpt(
        "enabled_triggers",
        default=[],
        help="Names of the redirect triggers to evaluate (entry points in "
             "the 'nova_dcmigrate.redirect_triggers' group), in order; the "
             "first one that decides wins. Shipped: destination_disabled, "
             "destination_unfit, too_slow. Empty (the default): no "
             "automatic redirect ever happens." + _SERVICES +
             "\n\nRelated options: dry_run, interval."),
    cfg.FloatOpt(
        "interval",
        default=10.0,
        min=0.1,
        help="Seconds between two evaluations of the triggers for one "
             "running live migration. Evaluations run in a background "
             "worker and never block Nova's migration monitor; a new one "
             "starts only once the previous one finished." + _SERVICES +
             "\n\nRelated options: enabled_triggers."),
    cfg.IntOpt(
        "max_redirects_per_migration",
        default=2,
        min=0,
        help="Most automatic redirects requested for one live migration "
             "(redirects asked for through the API do not count). Once "
             "reached, the triggers are still evaluated and their "
             "decisions recorded, but nothing is redirected." + _SERVICES +
             "\n\nRelated options: min_interval."),
    cfg.FloatOpt(
        "min_interval",
        default=60.0,
        min=0.0,
        help="Seconds that must pass after an automatic decision (a "
             "redirect, a dry-run decision, or a decision to continue "
             "because the re-pick found no better host) and after the "
             "start of each migration attempt before the next automatic "
             "decision." + _SERVICES +
             "\n\nRelated options: max_redirects_per_migration."),
    cfg.BoolOpt(
        "dry_run",
        default=False,
        help="Only record what the triggers would have done (log line, "
             "instance action event, notification, decision record); never "
             "redirect." + _SERVICES +
             "\n\nRelated options: enabled_triggers."),
    cfg.BoolOpt(
        "destination_disabled_when_down",
        default=True,
        help="destination_disabled trigger: also fire when the "
             "destination's nova-compute service is reported down by the "
             "servicegroup driver, not only when it is disabled." +
             _SERVICES),
    cfg.IntOpt(
        "destination_unfit_confirmations",
        default=2,
        min=1,
        help="destination_unfit trigger: how many evaluations in a row "
             "the destination must fail nova-scheduler's filters (for the "
             "instance's request spec) before the trigger fires. The check "
             "goes through placement, which counts the migrating "
             "instance's own claim on the destination as used, so a "
             "destination with no room for a second copy of the instance "
             "is reported unfit too." + _SERVICES),
    cfg.FloatOpt(
        "too_slow_deadline",
        default=0.0,
        min=0.0,
        help="too_slow trigger: seconds after the start of a migration "
             "attempt by which it must be projected to complete. 0 (the "
             "default): the moment Nova's own timeout action would fire, "
             "[libvirt] live_migration_completion_timeout times the "
             "migration's data size in GiB (Nova's formula); if Nova's "
             "timeout is disabled too, too_slow never fires." + _SERVICES +
             "\n\nRelated options: [libvirt] "
             "live_migration_completion_timeout."),
    cfg.FloatOpt(
        "too_slow_min_speedup",
        default=1.5,
        min=1.0,
        help="too_slow trigger: fire only if the projected remaining time "
             "of the running attempt is at least this many times the "
             "estimated time of a redirected attempt to the re-picked "
             "host." + _SERVICES),
    cfg.FloatOpt(
        "too_slow_min_elapsed",
        default=20.0,
        min=0.0,
        help="too_slow trigger: seconds an attempt must have run before "
             "its rates are trusted." + _SERVICES),
    cfg.FloatOpt(
        "too_slow_expected_rate",
        default=0.0,
        min=0.0,
        help="too_slow trigger: transfer rate in MiB/s that the source is "
             "expected to reach to a healthy host. 0 (the default): the "
             "highest rate this attempt was measured at." + _SERVICES),
    cfg.FloatOpt(
        "too_slow_redirect_overhead",
        default=5.0,
        min=0.0,
        help="too_slow trigger: seconds a redirect costs before the new "
             "attempt moves memory (re-pick, claims, checks, "
             "pre_live_migration), added to its estimate." + _SERVICES),
    cfg.FloatOpt(
        "rate_window",
        default=30.0,
        min=1.0,
        help="Seconds of progress samples over which transfer and "
             "progress rates are measured." + _SERVICES),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    groups.register(conf, GROUP, OPTS)


def list_opts() -> dict[cfg.OptGroup, list[cfg.Opt]]:
    return {GROUP: OPTS}
