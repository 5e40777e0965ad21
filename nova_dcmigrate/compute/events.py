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

Best effort and off the caller's thread: the writes (conductor calls) go
to one worker thread, in order, so a slow conductor never holds up the
run's lock or Nova's migration monitor. A failure to write the action is
logged, never raised -- the redirect itself must not fail because of its
audit trail.
"""

from __future__ import annotations

import concurrent.futures
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
        self._worker = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="dcmigrate-actions")

    def start(self, context: Any, record: records.RedirectRecord) -> None:
        """Create the action and start its event (at request time)."""
        ctxt = context.elevated()
        ctxt.request_id = request_id(record)
        record.request_id = ctxt.request_id
        with self._lock:
            self._contexts[record.id] = ctxt
        self._worker.submit(self._start, ctxt, record.server_id,
                            record.source, record.id)

    def finish(self, record: records.RedirectRecord) -> None:
        """Finish the event once the record reached a final state."""
        with self._lock:
            ctxt = self._contexts.pop(record.id, None)
        if ctxt is None:
            return
        self._worker.submit(self._finish, ctxt, record.server_id,
                            record.id, record.state, dict(record.error or {}))

    def wait(self) -> None:
        """Until every write queued so far is done (tests)."""
        self._worker.submit(lambda: None).result()

    @staticmethod
    def _start(ctxt: Any, server_id: str, host: str, rid: str) -> None:
        try:
            objects.InstanceAction.action_start(
                ctxt, server_id, ACTION, want_result=False)
            objects.InstanceActionEvent.event_start(
                ctxt, server_id, EVENT, want_result=False, host=host)
        except Exception as err:  # noqa: BLE001 - audit only
            LOG.warning("Redirect %(id)s: cannot record instance action: "
                        "%(err)s", {"id": rid, "err": err})

    @staticmethod
    def _finish(ctxt: Any, server_id: str, rid: str,
                state: records.RedirectState, error: dict[str, str]) -> None:
        try:
            if state == records.RedirectState.COMPLETED:
                objects.InstanceActionEvent.event_finish(
                    ctxt, server_id, EVENT, want_result=False)
            else:
                message = "redirect %s: %s" % (
                    state.value, error.get("message") or "no error recorded")
                objects.InstanceActionEvent.event_finish_with_failure(
                    ctxt, server_id, EVENT, exc_val=message,
                    exc_tb="%s: %s" % (error.get("code", "RedirectError"),
                                       message),
                    want_result=False)
            objects.InstanceAction.action_finish(
                ctxt, server_id, want_result=False)
        except Exception as err:  # noqa: BLE001 - audit only
            LOG.warning("Redirect %(id)s: cannot finish instance action: "
                        "%(err)s", {"id": rid, "err": err})
