"""Making every automatic decision visible.

Each decision the monitor records (:class:`Outcome`) goes to

* the log: INFO for a redirect, dry-run and continue decisions, WARNING
  when refused;
* an instance action event under the live migration's action (visible
  with ``openstack server event show``), named
  ``dcmigrate_trigger <trigger> <outcome> <time>: <summary>`` (at most
  255 characters; Nova keeps event details only for failed events, so the
  summary is in the name and the full evidence in the notification and
  the redirect record);
* a versioned notification on Nova's notifier, event type
  ``dcmigrate.redirect_trigger.<outcome>`` (priority INFO, publisher
  ``nova-compute:<host>``), payload ``RedirectTriggerPayload`` 1.0 in
  namespace ``dcmigrate`` (see :func:`payload`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import nova.conf
from nova import objects
from nova import rpc
from oslo_log import log as logging

LOG = logging.getLogger(__name__)
NOVA_CONF = nova.conf.CONF

#: Outcomes of a decision.
REDIRECTED = "redirect"
DRY_RUN = "dry_run"
CONTINUED = "continue"
CAPPED = "capped"
REFUSED = "refused"
OUTCOMES = (REDIRECTED, DRY_RUN, CONTINUED, CAPPED, REFUSED)

EVENT_TYPE = "dcmigrate.redirect_trigger.%s"
PAYLOAD_NAME = "RedirectTriggerPayload"
PAYLOAD_NAMESPACE = "dcmigrate"
PAYLOAD_VERSION = "1.0"
EVENT_PREFIX = "dcmigrate_trigger"
_EVENT_NAME_MAX = 255


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One recorded automatic decision."""

    instance_uuid: str
    migration_uuid: str
    source: str
    destination: str
    trigger: str
    outcome: str
    summary: str
    evidence: dict[str, Any]
    at: str
    candidate: str | None = None
    #: The redirect record's id, when a redirect was requested.
    redirect_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def event_name(outcome: Outcome) -> str:
    """The instance action event name of a decision."""
    # Unique per decision: Nova finishes an event found by action and
    # name.
    name = "%s %s %s %s: %s" % (EVENT_PREFIX, outcome.trigger,
                                outcome.outcome, outcome.at,
                                outcome.summary)
    return name[:_EVENT_NAME_MAX]


def payload(outcome: Outcome) -> dict[str, Any]:
    """The versioned notification payload (version 1.0).

    ``nova_object.data`` keys: instance_uuid, migration_uuid, source,
    destination, trigger, outcome (one of :data:`OUTCOMES`), summary,
    evidence (trigger specific), at (ISO 8601 UTC), candidate,
    redirect_id.
    """
    return {"nova_object.name": PAYLOAD_NAME,
            "nova_object.namespace": PAYLOAD_NAMESPACE,
            "nova_object.version": PAYLOAD_VERSION,
            "nova_object.data": outcome.to_dict()}


def publish(context: Any, host: str, outcome: Outcome) -> None:
    """Log the decision, write its action event, send its notification.

    The event and the notification are best effort (logged on failure):
    the decision itself has been taken already.
    """
    level = LOG.warning if outcome.outcome == REFUSED else LOG.info
    level("Automatic redirect trigger %(trigger)s: %(outcome)s for live "
          "migration %(migration)s to %(dest)s: %(summary)s; evidence "
          "%(evidence)s", {"trigger": outcome.trigger,
                           "outcome": outcome.outcome,
                           "migration": outcome.migration_uuid,
                           "dest": outcome.destination,
                           "summary": outcome.summary,
                           "evidence": outcome.evidence})
    name = event_name(outcome)
    try:
        objects.InstanceActionEvent.event_start(
            context, outcome.instance_uuid, name, want_result=False,
            host=host)
        objects.InstanceActionEvent.event_finish(
            context, outcome.instance_uuid, name, want_result=False)
    except Exception as err:
        LOG.warning("Recording instance action event %(name)r failed: "
                    "%(err)s", {"name": name, "err": err})
    notify(context, host, outcome)


def notify(context: Any, host: str, outcome: Outcome) -> None:
    """Send the versioned notification if Nova's notifier sends them."""
    notifier = rpc.NOTIFIER
    if (notifier is None or not notifier.is_enabled() or
            NOVA_CONF.notifications.notification_format
            not in ("both", "versioned")):
        return
    try:
        rpc.get_versioned_notifier("nova-compute:%s" % host).info(
            context, EVENT_TYPE % outcome.outcome, payload(outcome))
    except Exception as err:
        LOG.warning("Sending the %(type)s notification failed: %(err)s",
                    {"type": EVENT_TYPE % outcome.outcome, "err": err})
