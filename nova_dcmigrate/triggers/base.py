"""The redirect trigger interface.

A trigger is a small class loaded by stevedore from the entry point group
:data:`NAMESPACE`. The source nova-compute builds one :class:`Inputs` per
evaluation of a running live migration and asks every enabled trigger, in
order, for a :class:`Decision`; the first non-None answer is acted on (see
:mod:`nova_dcmigrate.triggers.monitor` for the guard rails around it).

Writing one::

    class MyTrigger(base.RedirectTrigger):
        name = "my_trigger"

        def evaluate(self, inputs):
            if inputs.destination.host != "bad-host":
                return None
            return base.Decision.redirect_to_repick(
                self.name, "destination is bad-host",
                {"host": inputs.destination.host})

and register it in the packaging metadata::

    [entry_points]
    nova_dcmigrate.redirect_triggers =
        my_trigger = mypackage.triggers:MyTrigger

``evaluate`` runs in a background worker, never in Nova's monitor loop,
so it may ask the scheduler (``inputs.scheduler``); it must not change
anything itself.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any
from typing import Protocol

from nova_dcmigrate import exception

#: stevedore entry point group of the triggers.
NAMESPACE = "nova_dcmigrate.redirect_triggers"

#: Decision actions.
REDIRECT = "redirect"
CONTINUE = "continue"


class TriggerInputError(exception.DcmigrateError):
    """An input a trigger needs is missing or malformed."""

    msg_fmt = "Trigger %(trigger)s cannot evaluate: %(reason)s"


class SchedulerViewError(exception.DcmigrateError):
    """The scheduler could not answer (RPC or placement failure)."""

    msg_fmt = "The scheduler could not answer %(question)s: %(reason)s"


class NotRedirected(exception.DcmigrateError):
    """Why an automatic decision did not become a redirect: the ``error``
    of its redirect record (state ``failed``), by class name."""

    msg_fmt = "Trigger %(trigger)s: not redirected"


class DryRun(NotRedirected):
    msg_fmt = ("Trigger %(trigger)s would have redirected the migration "
               "([dcmigrate_auto] dry_run: only recorded)")


class RedirectCapped(NotRedirected):
    msg_fmt = ("Trigger %(trigger)s: %(count)d automatic redirects of this "
               "migration already ([dcmigrate_auto] "
               "max_redirects_per_migration)")


class NoBetterHost(NotRedirected):
    msg_fmt = ("Trigger %(trigger)s: the migration continues to "
               "%(destination)s: %(reason)s")


@dataclasses.dataclass(frozen=True)
class Progress:
    """The running attempt as measured from libvirt's job statistics.

    Rates are in bytes per second over the last ``[dcmigrate_auto]
    rate_window`` seconds; ``peak_transfer_rate`` is the highest windowed
    transfer rate of this attempt.
    """

    #: Seconds since the current attempt started.
    elapsed: float
    data_total: int
    data_processed: int
    data_remaining: int
    memory_total: int
    memory_remaining: int
    #: Bytes per second put on the wire.
    transfer_rate: float
    #: Bytes per second by which ``data_remaining`` shrinks (transfer
    #: minus what the guest dirties again).
    progress_rate: float
    peak_transfer_rate: float
    #: Samples the rates come from (at least 2 for a rate).
    samples: int
    #: Seconds after the attempt's start at which Nova's timeout action
    #: fires (``[libvirt] live_migration_completion_timeout`` x data GiB),
    #: None when Nova's timeout is disabled.
    nova_timeout: float | None

    @property
    def dirty_rate(self) -> float:
        """Bytes per second the guest makes dirty again (estimated)."""
        return max(0.0, self.transfer_rate - self.progress_rate)

    @property
    def projected_remaining(self) -> float:
        """Seconds until ``data_remaining`` reaches 0 at the progress
        rate; infinite when the migration does not converge."""
        if self.data_remaining <= 0:
            return 0.0
        if self.progress_rate <= 0:
            return math.inf
        return self.data_remaining / self.progress_rate


@dataclasses.dataclass(frozen=True)
class DestinationState:
    """The current destination's nova-compute service."""

    host: str
    disabled: bool
    disabled_reason: str | None
    #: As the servicegroup driver reports it.
    up: bool
    forced_down: bool = False


@dataclasses.dataclass(frozen=True)
class Alternative:
    """Where the re-pick would send the migration now."""

    host: str
    #: Measured or configured rate from the source to it (bytes/s), if
    #: known.
    link_rate: float | None = None


class SchedulerView(Protocol):
    """Questions a trigger may ask nova-scheduler (each may take time)."""

    def destination_fits(self) -> bool:
        """Whether the current destination still passes the scheduler's
        filters for the instance's request spec.

        :raises SchedulerViewError: the scheduler could not answer.
        """

    def alternative(self) -> Alternative | None:
        """The host the re-pick would choose now (nothing is claimed), or
        None if it finds none.

        :raises SchedulerViewError: the scheduler could not answer.
        """


@dataclasses.dataclass
class Inputs:
    """What a trigger sees of one running live migration."""

    instance_uuid: str
    migration_uuid: str
    source: str
    #: Every destination so far; the current one last.
    destinations: list[str]
    progress: Progress | None
    destination: DestinationState | None
    scheduler: SchedulerView
    #: Whether earlier destinations relay the pages they hold (the agents
    #: transport) or a redirect resends everything (direct).
    relays: bool
    #: Per-trigger state kept across evaluations of this migration
    #: (``memo[trigger name]``), e.g. for confirmations.
    memo: dict[str, dict[str, Any]] = dataclasses.field(
        default_factory=dict)

    @property
    def dest(self) -> str:
        return self.destinations[-1]

    def state(self, trigger: str) -> dict[str, Any]:
        """Return the trigger's own memo for this migration."""
        return self.memo.setdefault(trigger, {})


@dataclasses.dataclass(frozen=True)
class Decision:
    """A trigger's answer: leave the destination (``redirect``) or keep
    going (``continue``), with the evidence it is based on."""

    trigger: str
    action: str
    #: One line for humans (log, instance action event).
    summary: str
    #: JSON-serialisable facts (numbers, host names).
    evidence: dict[str, Any]
    #: Host the re-pick is expected to choose, if the trigger asked.
    candidate: str | None = None

    @classmethod
    def redirect_to_repick(cls, trigger: str, summary: str,
                           evidence: dict[str, Any],
                           candidate: str | None = None) -> Decision:
        return cls(trigger, REDIRECT, summary, evidence, candidate)

    @classmethod
    def keep_going(cls, trigger: str, summary: str,
                   evidence: dict[str, Any]) -> Decision:
        return cls(trigger, CONTINUE, summary, evidence)


class RedirectTrigger(abc.ABC):
    """Base class of every redirect trigger.

    :param conf: the ``[dcmigrate_auto]`` option group (thresholds).
    """

    #: The entry point name; also ``requested_by = "trigger:<name>"``.
    name: str = ""

    def __init__(self, conf: Any) -> None:
        self.conf = conf

    @abc.abstractmethod
    def evaluate(self, inputs: Inputs) -> Decision | None:
        """Decide about one running migration.

        :returns: a :class:`Decision`, or None when this trigger has
            nothing to say.
        :raises TriggerInputError: an input it needs is missing or bad.
        :raises SchedulerViewError: from ``inputs.scheduler``.
        """
