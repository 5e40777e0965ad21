"""Errors of the scheduler hook."""

from __future__ import annotations

from nova_dcmigrate import exception


class NoValidRedirectTarget(exception.DcmigrateError):
    """nova-scheduler found no host that can take over the migration.

    Raised by :func:`nova_dcmigrate.scheduler.repick.select_new_destination`
    when the scheduler answers NoValidHost. Nothing was claimed; the
    running migration is untouched and may continue to its current
    destination.
    """

    msg_fmt = ("No valid host to redirect live migration %(migration)s of "
               "instance %(instance)s to: %(reason)s (ignored hosts: "
               "%(ignored_hosts)s; required trait: %(trait)s).")
