"""Errors of redirect requests and of the redirect orchestration.

::

    DcmigrateError                       (nova_dcmigrate/exception.py)
     +-- RedirectError
          +-- UnknownLiveMigration       no live migration of it runs here
          +-- UnknownMigration           not the instance's running one
          +-- NotLiveMigration
          +-- MigrationNotRunning
          +-- PostCopyMigration
          +-- SwitchingOver
          +-- RedirectInProgress
          +-- InvalidRedirectTarget      the source, the current
          |                              destination, or no such host
          +-- RedirectPreparationFailed  the new host could not be set up;
          |                              the migration went on unchanged
          +-- RedirectCancelled          the job ended or was aborted while
          |                              the new host was prepared
          +-- UnsupportedInstance        NUMA/PCI resources a redirect
          |                              cannot move
          +-- RunStateError              a transition the run's table
                                         refuses (a bug, never silent)

The request errors are raised by the RPC endpoint before anything changes;
oslo.messaging rebuilds them on the caller's side from their kwargs when
this module is in the transport's allowed exception modules
(:func:`nova_dcmigrate.compute.rpcapi.register_exception_modules`).
"""

from __future__ import annotations

from nova_dcmigrate import exception


class RedirectError(exception.DcmigrateError):
    """Base class of every redirect error."""

    msg_fmt = "Live migration redirect failed: %(reason)s"


class UnknownLiveMigration(RedirectError):
    """The host does not run a live migration of this instance."""

    msg_fmt = ("No live migration of instance %(instance)s runs from host "
               "%(host)s with a redirectable driver.")


class UnknownMigration(RedirectError):
    """The migration is not the instance's running live migration."""

    msg_fmt = ("Migration %(migration)s is not the running live migration "
               "of instance %(instance)s (that is %(running)s).")


class NotLiveMigration(RedirectError):
    msg_fmt = ("Migration %(migration)s is a %(migration_type)s, not a "
               "live migration.")


class MigrationNotRunning(RedirectError):
    msg_fmt = ("Live migration %(migration)s is %(status)s; only a running "
               "live migration can be redirected.")


class PostCopyMigration(RedirectError):
    """In post-copy the guest already runs on the destination."""

    msg_fmt = ("Live migration %(migration)s is in post-copy: the guest "
               "already runs on %(destination)s and cannot be redirected.")


class SwitchingOver(RedirectError):
    """The guest is being switched over to its destination."""

    msg_fmt = ("Live migration %(migration)s is switching over to "
               "%(destination)s (%(status)s); too late to redirect.")


class RedirectInProgress(RedirectError):
    msg_fmt = ("Live migration %(migration)s is already being redirected "
               "to %(target)s (%(state)s).")


class InvalidRedirectTarget(RedirectError):
    msg_fmt = ("Cannot redirect live migration %(migration)s to host "
               "%(host)s: %(reason)s.")


class RedirectPreparationFailed(RedirectError):
    """Setting up the new host failed; everything done for it was undone."""

    msg_fmt = ("Redirecting live migration %(migration)s to %(host)s "
               "failed while %(step)s: %(reason)s. The migration continues "
               "to %(destination)s.")


class RedirectCancelled(RedirectError):
    """The prepare stopped: the migration ended or was aborted meanwhile;
    what it had set up on the new host was undone."""

    msg_fmt = ("Redirect of live migration %(migration)s to %(host)s "
               "cancelled while %(step)s: %(reason)s.")


class UnsupportedInstance(RedirectError):
    """The instance has resources a redirect does not move."""

    msg_fmt = ("Live migration %(migration)s of instance %(instance)s "
               "cannot be redirected: %(reason)s.")


class RunStateError(RedirectError):
    """A live-migration run was asked for a transition its table refuses.

    Raised instead of silently moving the run (see
    :data:`nova_dcmigrate.compute.run.TRANSITIONS`).
    """

    msg_fmt = ("The live migration of instance %(instance)s is %(state)s; "
               "it cannot become %(new)s.")


class RunRecordError(exception.DcmigrateError):
    """A persisted redirect record could not be written or read."""

    msg_fmt = ("Redirect record %(path)s of instance %(instance)s: "
               "%(reason)s")
