"""Redirect records: what each redirect request became, kept on the source.

A :class:`RedirectRecord` is made when the source compute queues a redirect
request (from the REST API through RPC, or from an automatic trigger) and
follows it to its end::

    requested --> preparing --> running --> completed
        |             |            |
        +-------------+------------+--> failed | rolled-back

* ``failed``: the redirect did not happen (refused while preparing, the
  new host could not be set up, or the old job could not be stopped); the
  live migration went on to its previous destination, or was rolled back
  by Nova, as its own error says.
* ``rolled-back``: the live migration ended on the source (aborted, or its
  attempt to the new destination failed) -- the guest never left it.
* ``completed``: the live migration finished on this redirect's new
  destination.

Transitions go through :meth:`RedirectRecord.transition`, guarded by
:data:`TRANSITIONS`; anything else raises :class:`InvalidRedirectTransition`.
The source keeps a bounded history per instance (:class:`RedirectHistory`,
``[dcmigrate_compute] redirect_history_per_instance``). The JSON form
(:meth:`RedirectRecord.to_dict`) is the one of the redirect REST API
(``CONTRACT-redirect-api.md``), so this module imports nothing from Nova.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import enum
import threading
import uuid
from collections.abc import Mapping
from typing import Any

from nova_dcmigrate import exception


class RedirectState(str, enum.Enum):
    REQUESTED = "requested"
    PREPARING = "preparing"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    ROLLED_BACK = "rolled-back"


S = RedirectState
#: Allowed transitions; the guard of :meth:`RedirectRecord.transition`.
TRANSITIONS: Mapping[RedirectState, frozenset[RedirectState]] = {
    S.REQUESTED: frozenset({S.PREPARING, S.FAILED, S.ROLLED_BACK}),
    S.PREPARING: frozenset({S.RUNNING, S.FAILED, S.ROLLED_BACK}),
    S.RUNNING: frozenset({S.COMPLETED, S.FAILED, S.ROLLED_BACK}),
    S.COMPLETED: frozenset(),
    S.FAILED: frozenset(),
    S.ROLLED_BACK: frozenset(),
}
FINAL_STATES = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)

#: Keys of the ``progress`` object, all present (null when unknown).
PROGRESS_KEYS = ("bytes_from_source", "bytes_relayed", "pages_deduplicated",
                 "remaining_bytes", "estimated_completion")


class InvalidRedirectTransition(exception.DcmigrateError):
    msg_fmt = ("Redirect %(redirect)s cannot go from %(state)s to "
               "%(new_state)s.")


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def isotime(when: datetime.datetime | None) -> str | None:
    """ISO 8601 in UTC with a ``Z``, or None."""
    if when is None:
        return None
    return when.astimezone(datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ")


def parse_isotime(text: str | None) -> datetime.datetime | None:
    if text is None:
        return None
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def user_requester(user_id: str | None) -> str:
    """``requested_by`` of a redirect asked for by a user."""
    return "user:%s" % (user_id or "unknown")


def trigger_requester(name: str) -> str:
    """``requested_by`` of a redirect asked for by an automatic trigger."""
    return "trigger:%s" % name


def error_dict(err: BaseException) -> dict[str, str]:
    """The record's ``error``: the class name (a code, never parsed from
    the text) and the message."""
    return {"code": type(err).__name__, "message": str(err)}


@dataclasses.dataclass
class RedirectRecord:
    """One redirect of one live migration (see the module docstring)."""

    server_id: str
    migration_id: str
    source: str
    old_destination: str
    requested_by: str
    new_destination: str | None = None
    reason: str | None = None
    evidence: dict[str, Any] | None = None
    id: str = dataclasses.field(default_factory=lambda: str(uuid.uuid4()))
    state: RedirectState = RedirectState.REQUESTED
    created_at: datetime.datetime = dataclasses.field(
        default_factory=utcnow)
    updated_at: datetime.datetime | None = None
    finished_at: datetime.datetime | None = None
    progress: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    #: Request id of the call that asked for it (links Nova's instance
    #: action of the redirect and the API's logs).
    request_id: str | None = None

    def __post_init__(self) -> None:
        self.state = RedirectState(self.state)
        if self.updated_at is None:
            self.updated_at = self.created_at

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    def transition(self, new: RedirectState | str, *,
                   error: BaseException | dict[str, str] | None = None,
                   now: datetime.datetime | None = None) -> None:
        """Move to ``new``; the only way the state changes.

        :raises InvalidRedirectTransition: ``new`` is not allowed from the
            current state (nothing changes).
        """
        new = RedirectState(new)
        if new not in TRANSITIONS[self.state]:
            raise InvalidRedirectTransition(
                redirect=self.id, state=self.state.value,
                new_state=new.value)
        now = now or utcnow()
        self.state = new
        self.updated_at = now
        if error is not None:
            self.error = (error_dict(error)
                          if isinstance(error, BaseException)
                          else dict(error))
        if new in FINAL_STATES:
            self.finished_at = now

    def set_progress(self, progress: Mapping[str, Any] | None) -> None:
        """Replace the progress (every key present, unknown ones null)."""
        if progress is None:
            return
        self.progress = {k: progress.get(k) for k in PROGRESS_KEYS}
        self.updated_at = utcnow()

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of the REST API and the RPC replies."""
        return {
            "id": self.id,
            "server_id": self.server_id,
            "migration_id": self.migration_id,
            "state": self.state.value,
            "source": self.source,
            "old_destination": self.old_destination,
            "new_destination": self.new_destination,
            "requested_by": self.requested_by,
            "reason": self.reason,
            "evidence": self.evidence,
            "created_at": isotime(self.created_at),
            "updated_at": isotime(self.updated_at),
            "finished_at": isotime(self.finished_at),
            "progress": dict(self.progress) if self.progress else None,
            "error": dict(self.error) if self.error else None,
            "request_id": self.request_id,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RedirectRecord:
        """Rebuild a record from :meth:`to_dict` output."""
        return cls(
            id=data["id"], server_id=data["server_id"],
            migration_id=data["migration_id"], source=data["source"],
            old_destination=data["old_destination"],
            new_destination=data.get("new_destination"),
            requested_by=data["requested_by"], reason=data.get("reason"),
            evidence=data.get("evidence"),
            state=RedirectState(data["state"]),
            created_at=parse_isotime(data["created_at"]) or utcnow(),
            updated_at=parse_isotime(data.get("updated_at")),
            finished_at=parse_isotime(data.get("finished_at")),
            progress=data.get("progress"), error=data.get("error"),
            request_id=data.get("request_id"))


class RedirectHistory:
    """The newest redirect records of each instance, bounded.

    Kept by the source compute across the end of each live migration so
    that finished redirects can still be listed. ``per_instance`` records
    per instance and ``instances`` instances (least recently touched
    dropped first) bound the memory used.
    """

    def __init__(self, per_instance: int, instances: int) -> None:
        self._lock = threading.Lock()
        self._per_instance = max(1, per_instance)
        self._instances = max(1, instances)
        self._records: collections.OrderedDict[
            str, collections.deque[RedirectRecord]] = (
                collections.OrderedDict())

    def add(self, record: RedirectRecord) -> None:
        with self._lock:
            dq = self._records.pop(record.server_id, None)
            if dq is None:
                dq = collections.deque(maxlen=self._per_instance)
            dq.append(record)
            self._records[record.server_id] = dq
            while len(self._records) > self._instances:
                self._records.popitem(last=False)

    def list(self, server_id: str,
             migration_id: str | None = None) -> list[RedirectRecord]:
        """The instance's records, newest first."""
        with self._lock:
            records = list(self._records.get(server_id, ()))
        return [r for r in reversed(records)
                if migration_id is None or r.migration_id == migration_id]
