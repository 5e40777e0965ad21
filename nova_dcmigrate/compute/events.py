"""Nova instance actions for redirects, so Nova's own tools show them.

Each redirect gets its own instance action ``dcmigrate-redirect`` with the
request id ``req-<redirect id>`` and one event ``dcmigrate_redirect``
(host: the source), so ``openstack server event list <server>`` lists
every redirect with who asked (the action's user and project) and
``openstack server event show <server> req-<redirect id>`` shows its
result: ``Success`` once the migration completed on the new host,
``Error`` with the error as ``details`` (and ``traceback``, for admins)
otherwise.

Why an action per redirect and not events under the live migration's
action: Nova finds the event to finish by action and event *name*
(``db.action_event_finish``: ``filter_by(event=...).first()``), so a
second event of the same name under one action could never be finished.
Nova's events carry no free text on success; the redirect's ``reason``
stays in the redirect record (``GET /v1/servers/{id}/redirects/{id}``),
which the action's request id names.

Best effort: a failure to write the action is logged, never raised --
the redirect itself must not fail because of its audit trail.
"""

from __future__ import annotations

import threading
from typing import Any

from nova import objects
from oslo_log import log as logging

from nova_dcmigrate.compute import records

LOG = logging.getLogger(__name__)

ACTION = "dcmigrate-redirect"
EVENT = "dcmigrate_redirect"


def request_id(record: records.RedirectRecord) -> str:
    """The Nova request id of the redirect's instance action."""
    return "req-%s" % record.id


class ActionRecorder:
    """Starts and finishes the instance action of each redirect."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: Contexts of started actions, by redirect id, until finished.
        self._contexts: dict[str, Any] = {}

    def start(self, context: Any, record: records.RedirectRecord) -> None:
        """Create the action and start its event (at request time)."""
        ctxt = context.elevated()
        ctxt.request_id = request_id(record)
        record.request_id = ctxt.request_id
        try:
            objects.InstanceAction.action_start(
                ctxt, record.server_id, ACTION, want_result=False)
            objects.InstanceActionEvent.event_start(
                ctxt, record.server_id, EVENT, want_result=False,
                host=record.source)
        except Exception as err:  # noqa: BLE001 - audit only
            LOG.warning("Redirect %(id)s: cannot record instance action: "
                        "%(err)s", {"id": record.id, "err": err})
            return
        with self._lock:
            self._contexts[record.id] = ctxt

    def finish(self, record: records.RedirectRecord) -> None:
        """Finish the event once the record reached a final state."""
        with self._lock:
            ctxt = self._contexts.pop(record.id, None)
        if ctxt is None:
            return
        try:
            if record.state == records.RedirectState.COMPLETED:
                objects.InstanceActionEvent.event_finish(
                    ctxt, record.server_id, EVENT, want_result=False)
            else:
                err = record.error or {}
                message = "redirect %s: %s" % (
                    record.state.value,
                    err.get("message") or "no error recorded")
                objects.InstanceActionEvent.event_finish_with_failure(
                    ctxt, record.server_id, EVENT, exc_val=message,
                    exc_tb="%s: %s" % (err.get("code", "RedirectError"),
                                       message),
                    want_result=False)
            objects.InstanceAction.action_finish(
                ctxt, record.server_id, want_result=False)
        except Exception as err:  # noqa: BLE001 - audit only
            LOG.warning("Redirect %(id)s: cannot finish instance action: "
                        "%(err)s", {"id": record.id, "err": err})
