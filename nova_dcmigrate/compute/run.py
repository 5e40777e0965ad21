"""State of one live migration run by a source, across its attempts.

A :class:`LiveMigrationRun` is shared by the redirect RPC endpoint (which
validates and queues requests), the driver's migration monitor (which acts
on them), the redirect's prepare worker and Nova's post/rollback
callbacks. Every change of its phase goes through :meth:`_move`, which
checks :data:`TRANSITIONS` under the run's lock: a callback arriving late
(e.g. a failed redirect after the guest already switched over) is refused
instead of silently moving the run back.

::

    RUNNING --request--> REQUESTED --take_request--> PREPARING
       ^  ^                  |                        |   |   |
       |  +------abort-------+           failed/undone|   |   |prepared
       |  +-------------------------------------------+   |   v
       |                                 deferred abort   | SWITCHING
       |                                    CANCELLING <--+   | stop failed
       +-------------------- take_switch / stop failed -------+
    any of the above --post_method--> COMPLETING --> COMPLETED
    any but COMPLETING --recover/commit failed--> ROLLED_BACK
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any
from typing import Protocol

from oslo_log import log as logging

from nova_dcmigrate.compute import exception
from nova_dcmigrate.compute import journal as run_journal
from nova_dcmigrate.compute import records

LOG = logging.getLogger(__name__)

RUNNING = "running"
REQUESTED = "redirect-requested"
PREPARING = "preparing"
SWITCHING = "switching"
#: The user's abort, deferred during a redirect, is stopping the job.
CANCELLING = "cancelling"
COMPLETING = "completing"
COMPLETED = "completed"
ROLLED_BACK = "rolled-back"

#: Every phase a run may move to from each phase; nothing else is allowed.
TRANSITIONS: dict[str, frozenset[str]] = {
    RUNNING: frozenset({REQUESTED, COMPLETING, ROLLED_BACK}),
    REQUESTED: frozenset({PREPARING, RUNNING, COMPLETING, ROLLED_BACK}),
    PREPARING: frozenset({SWITCHING, RUNNING, CANCELLING, COMPLETING,
                          ROLLED_BACK}),
    SWITCHING: frozenset({RUNNING, ROLLED_BACK}),
    CANCELLING: frozenset({RUNNING, COMPLETING, ROLLED_BACK}),
    COMPLETING: frozenset({COMPLETED}),
    COMPLETED: frozenset(),
    ROLLED_BACK: frozenset(),
}
PHASES = frozenset(TRANSITIONS)
FINAL = frozenset({COMPLETED, ROLLED_BACK})
#: Phases in which a new redirect request is refused as in progress.
BUSY = frozenset({REQUESTED, PREPARING, SWITCHING, CANCELLING})
#: Phases in which the running job is being stopped on purpose: its
#: failure is ours, not an error.
STOPPING = frozenset({SWITCHING, CANCELLING})

#: Migration statuses of a live migration that is switching over or done.
SWITCHOVER_STATUSES = frozenset({"post-migrating", "completed", "done"})
POSTCOPY_STATUS = "running (post-copy)"
LIVE_MIGRATION = "live-migration"


def error_record(err: BaseException) -> dict[str, Any]:
    """``{type, message, data}`` of an error, as the status reports it."""
    return {"type": type(err).__name__, "message": str(err),
            "data": dict(getattr(err, "kwargs", {}))}


class ActionRecorder(Protocol):
    """Writes the Nova instance action of each redirect
    (:class:`nova_dcmigrate.compute.events.ActionRecorder`)."""

    def start(self, context: Any, record: records.RedirectRecord) -> None:
        """At request time."""

    def finish(self, record: records.RedirectRecord) -> None:
        """Once the record reached a final state."""


class LiveMigrationRun:
    """One live migration run by this source, across its attempts.

    ``lock`` guards every field; the methods take it themselves.
    """

    def __init__(self, instance_uuid: str, migration: Any, source: str,
                 dest: str, migrate_data: Any, source_bdms: Any) -> None:
        self.lock = threading.RLock()
        self.instance_uuid = instance_uuid
        self.migration = migration
        self.source = source
        #: Destination of every attempt so far; the current one is last.
        self.destinations = [dest]
        self.migrate_data = migrate_data
        #: The BDMs as on the source before any pre_live_migration.
        self.source_bdms = source_bdms
        self.phase = RUNNING
        #: Host asked for (None: re-pick) while REQUESTED.
        self.requested_host: str | None = None
        #: Host being prepared, while PREPARING/SWITCHING.
        self.target: str | None = None
        self.redirects = 0
        self.last_error: dict[str, Any] | None = None
        #: A user abort arrived while the migration was between attempts.
        self.abort_requested = False
        #: A user abort went to libvirt at once (not deferred): the job's
        #: "operation aborted" error is then its expected end.
        self.abort_sent = False
        #: (destination, migrate_data) of the next attempt, once committed.
        self.switch: tuple[str, Any] | None = None
        #: Set when a running prepare must stop at its next step (the job
        #: ended, or the user aborted).
        self.cancel = threading.Event()
        #: The prepare worker's result while one runs (see the driver).
        self.preparation: concurrent.futures.Future[Any] | None = None
        #: Clean-up steps of a redirect that failed (CleanupStep), retried
        #: by the driver's housekeeping; reported until done.
        self.cleanup_pending: list[Any] = []
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        # -- redirect records (branch api) --
        #: Record of the request being acted on (requested/preparing).
        self.pending_record: records.RedirectRecord | None = None
        #: Record of the redirect the current attempt runs for.
        self.running_record: records.RedirectRecord | None = None
        #: Where new records go (set by Registry.add); None: nowhere.
        self.history: records.RedirectHistory | None = None
        #: Writes Nova instance actions (set by Registry.add).
        self.actions: ActionRecorder | None = None
        # -- restarts --
        #: Where the run is persisted once a redirect starts (set by
        #: Registry.add); None: nowhere.
        self.journal: run_journal.RunJournal | None = None
        #: A redirect was started: the run is persisted until it ends.
        self.persisted = False
        #: ``{host: [attachment ids]}`` each destination's
        #: pre_live_migration made (for a clean-up after a restart).
        self.attachments: dict[str, list[str]] = {}

    # -- the guard -------------------------------------------------------

    def _move(self, new: str) -> None:
        """Enter ``new``; the caller holds ``lock``.

        :raises RunStateError: ``new`` is not allowed from the phase.
        """
        if new not in TRANSITIONS[self.phase]:
            raise exception.RunStateError(
                instance=self.instance_uuid, state=self.phase, new=new)
        self.phase = new

    def move(self, new: str) -> None:
        """Enter ``new`` (guarded, see :data:`TRANSITIONS`)."""
        with self.lock:
            self._move(new)

    @property
    def dest(self) -> str:
        """The current destination."""
        return self.destinations[-1]

    @property
    def stopping(self) -> bool:
        """Whether the running job is being stopped on purpose."""
        return self.phase in STOPPING

    # -- persistence (restarts, see .journal) ------------------------------

    def record(self) -> run_journal.RunRecord:
        """What a restarted source needs to finish or undo this run."""
        with self.lock:
            md = self.migrate_data
            return run_journal.RunRecord(
                instance=self.instance_uuid, migration=self.migration.uuid,
                source=self.source, destinations=list(self.destinations),
                target=self.target, phase=self.phase,
                migrate_data=(md.obj_to_primitive()
                              if hasattr(md, "obj_to_primitive") else None),
                source_bdms=[b.obj_to_primitive() for b in self.source_bdms
                             if hasattr(b, "obj_to_primitive")],
                attachments={h: list(a) for h, a in
                             self.attachments.items()},
                cleanup_hosts=sorted({c.host for c in self.cleanup_pending
                                      if c.state == "pending"}))

    def persist(self) -> None:
        """Write the run's record (from now on, until it ends).

        Never raises: a record that cannot be written is an ERROR (a
        restart in the middle of this redirect would then need a manual
        clean-up), not a reason to stop the migration. Written under the
        run's lock so that two writers cannot reorder records; the
        monitor's poll waits at most for one small write (a few KiB and
        an fsync), only at the redirect's steps.
        """
        if self.journal is None:
            return
        with self.lock:
            self.persisted = True
            try:
                self.journal.write(self.record())
            except (exception.RunRecordError, TypeError,
                    ValueError) as err:
                LOG.error("Redirect of live migration %(mig)s: not "
                          "persisted: %(err)s", {"mig": self.migration.uuid,
                                                 "err": err},
                          instance_uuid=self.instance_uuid)

    def note_target(self, host: str) -> None:
        """The host being prepared is known (named or re-picked)."""
        with self.lock:
            self.target = host
            self.persist()

    def note_attachments(self, host: str, attachment_ids: list[str]) -> None:
        """``host``'s pre_live_migration made these volume attachments."""
        with self.lock:
            self.attachments[host] = sorted(
                set(self.attachments.get(host, [])) | set(attachment_ids))
            self.persist()

    def _persist_if_started(self) -> None:
        # After a change a restarted source must know (lock held).
        if self.persisted:
            self.persist()

    def unpersist(self) -> None:
        """The run ended: drop its record, or keep the hosts whose
        clean-up is still pending (the housekeeping drops it later)."""
        if self.journal is None or not self.persisted:
            return
        with self.lock:
            if any(c.state == "pending" for c in self.cleanup_pending):
                self.persist()
            else:
                self.journal.remove(self.instance_uuid)

    # -- requests (RPC endpoint) -----------------------------------------

    def check_redirectable(self, migration: Any, host: str | None) -> None:
        """Refuse a redirect request that cannot be acted on.

        :param migration: the migration named by the request, as read from
            the database by the caller.
        :param host: the requested new destination, or None.
        :raises RedirectError: the reason, with its data; nothing changes.
        """
        mig = self.migration
        if migration.uuid != mig.uuid:
            raise exception.UnknownMigration(
                migration=migration.uuid, instance=self.instance_uuid,
                running=mig.uuid)
        if migration.migration_type != LIVE_MIGRATION:
            raise exception.NotLiveMigration(
                migration=migration.uuid,
                migration_type=migration.migration_type)
        status = migration.status
        if status == POSTCOPY_STATUS:
            raise exception.PostCopyMigration(migration=mig.uuid,
                                              destination=self.dest)
        if status in SWITCHOVER_STATUSES or self.phase in (
                COMPLETING, COMPLETED):
            raise exception.SwitchingOver(
                migration=mig.uuid, destination=self.dest,
                status=status if status != "running" else self.phase)
        if status != "running":
            raise exception.MigrationNotRunning(migration=mig.uuid,
                                                status=status)
        if self.phase in BUSY:
            raise exception.RedirectInProgress(
                migration=mig.uuid, state=self.phase,
                target=self.target or self.requested_host or "(scheduler)")
        if self.phase != RUNNING:
            raise exception.MigrationNotRunning(migration=mig.uuid,
                                                status=self.phase)
        if host == self.source:
            raise exception.InvalidRedirectTarget(
                migration=mig.uuid, host=host,
                reason="it is the source of the migration")
        if host == self.dest:
            raise exception.InvalidRedirectTarget(
                migration=mig.uuid, host=host,
                reason="it is the current destination")

    def request(self, host: str | None, *, requested_by: str | None = None,
                reason: str | None = None,
                evidence: dict[str, Any] | None = None,
                context: Any = None) -> records.RedirectRecord:
        """Queue a validated redirect for the monitor thread.

        Call after :meth:`check_redirectable` (both under ``lock``).

        :param requested_by: ``user:<id>`` or ``trigger:<name>``
            (:func:`records.user_requester`,
            :func:`records.trigger_requester`).
        :param context: a Nova RequestContext; with one, the redirect gets
            its Nova instance action (:mod:`.events`).
        :returns: the new record (state ``requested``).
        :raises RunStateError: the run cannot take a request now.
        """
        with self.lock:
            self._move(REQUESTED)
            self.requested_host = host
            self.last_error = None
            record = records.RedirectRecord(
                server_id=self.instance_uuid,
                migration_id=self.migration.uuid, source=self.source,
                old_destination=self.dest, new_destination=host,
                requested_by=requested_by or "unknown", reason=reason,
                evidence=evidence)
            self._record_to(self.pending_record, records.RedirectState.FAILED,
                            {"code": "RedirectSuperseded",
                             "message": "a newer request replaced it"})
            self.pending_record = record
            if self.history is not None:
                self.history.add(record)
        if context is not None and self.actions is not None:
            self.actions.start(context, record)
        return record

    def _record_to(self, record: records.RedirectRecord | None,
                   state: records.RedirectState,
                   error: BaseException | dict[str, str] | None = None
                   ) -> None:
        # Under self.lock. A record already final stays as it is.
        if record is None or record.finished:
            return
        record.transition(state, error=error)
        if record.finished and self.actions is not None:
            self.actions.finish(record)

    # -- the monitor and the prepare worker --------------------------------

    def take_request(self) -> tuple[bool, str | None]:
        """Return ``(pending, host)``; a pending request becomes PREPARING."""
        with self.lock:
            if self.phase != REQUESTED:
                return False, None
            self._move(PREPARING)
            self.cancel.clear()
            self.target = self.requested_host
            self._record_to(self.pending_record,
                            records.RedirectState.PREPARING)
            return True, self.requested_host

    def record_error(self, err: BaseException) -> None:
        """Record why the last redirect did not happen (no transition)."""
        with self.lock:
            self.last_error = error_record(err)
            self.target = None
            self._persist_if_started()
            # The pending redirect (if any) is what did not happen.
            self._record_to(self.pending_record,
                            records.RedirectState.FAILED, err)
            self.pending_record = None

    def failed(self, err: BaseException) -> None:
        """Record a redirect that did not happen; back to RUNNING.

        :raises RunStateError: in a phase that cannot go back to RUNNING
            (e.g. COMPLETING: the guest is already on its destination).
        """
        with self.lock:
            self.record_error(err)
            self._move(RUNNING)

    def executor(self) -> concurrent.futures.ThreadPoolExecutor:
        """The run's own worker thread (prepares new hosts)."""
        with self.lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="dcmigrate-redirect")
            return self._executor

    def shutdown(self) -> None:
        """Let the worker thread end (call when the run finished)."""
        with self.lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)

    def prepared(self) -> bool:
        """The new host is ready: stop the job (SWITCHING).

        :returns: False if the migration moved on meanwhile (its job
            ended, or an abort is pending): the preparation must be undone.
        """
        with self.lock:
            if self.phase != PREPARING or self.abort_requested:
                return False
            self._move(SWITCHING)
            return True

    def redirected(self, dest: str, migrate_data: Any) -> None:
        """Record the committed switch to ``dest`` (still SWITCHING)."""
        with self.lock:
            if self.phase != SWITCHING:
                raise exception.RunStateError(
                    instance=self.instance_uuid, state=self.phase,
                    new="redirected")
            self.destinations.append(dest)
            self.migrate_data = migrate_data
            self.switch = (dest, migrate_data)
            self.redirects += 1
            self.persist()
            record = self.pending_record
            if record is not None:
                record.new_destination = dest
                # The earlier redirect was carried out; this one takes
                # the migration further.
                self._record_to(self.running_record,
                                records.RedirectState.COMPLETED)
                self._record_to(record, records.RedirectState.RUNNING)
                self.running_record, self.pending_record = record, None

    def take_switch(self) -> tuple[str, Any] | None:
        """Return and clear the committed switch, if any (to RUNNING)."""
        with self.lock:
            switch, self.switch = self.switch, None
            if switch is not None:
                self._move(RUNNING)
                self.target = None
            return switch

    # -- Nova's abort and end of the migration -----------------------------

    def defer_abort(self) -> bool:
        """Record the user's abort if a redirect step is under way.

        :returns: True if the abort is deferred to the redirect's end;
            False if it must be acted on now (a queued request is dropped).
        """
        with self.lock:
            if self.phase == REQUESTED:
                self._move(RUNNING)
                self.requested_host = None
                self.last_error = {
                    "type": "Aborted", "data": {},
                    "message": "live migration aborted before the "
                               "redirect started"}
                self._record_to(self.pending_record,
                                records.RedirectState.ROLLED_BACK, {
                                    "code": "Aborted",
                                    "message": self.last_error["message"]})
                self.pending_record = None
                self.abort_sent = True
                return False
            if self.phase in (PREPARING, SWITCHING) or \
                    self.switch is not None:
                self.abort_requested = True
                self.cancel.set()
                return True
            self.abort_sent = True
            return False

    def cancelling(self) -> None:
        """The deferred abort now stops the job (CANCELLING)."""
        self.move(CANCELLING)

    def completing(self) -> None:
        """Nova's post-migration starts: any prepare is cancelled."""
        with self.lock:
            self.cancel.set()
            self._move(COMPLETING)

    def finish(self, phase: str) -> None:
        """End the run (COMPLETED or ROLLED_BACK)."""
        with self.lock:
            self.cancel.set()
            if self.phase != phase:
                self._move(phase)
            self._finish_records(phase)

    def _finish_records(self, phase: str) -> None:
        # The live migration ended (lock held): its open records end too.
        pending = self.pending_record
        if phase == COMPLETED:
            self._record_to(pending, records.RedirectState.FAILED,
                            exception.SwitchingOver(
                                migration=self.migration.uuid,
                                destination=self.dest, status=COMPLETED))
            self._record_to(self.running_record,
                            records.RedirectState.COMPLETED)
        else:
            self._record_to(pending, records.RedirectState.ROLLED_BACK, {
                "code": "LiveMigrationRolledBack",
                "message": "the live migration was rolled back to %s "
                           "before the redirect ran" % self.source})
            self._record_to(self.running_record,
                            records.RedirectState.ROLLED_BACK, {
                                "code": "LiveMigrationRolledBack",
                                "message": "the live migration to %s failed "
                                           "and was rolled back to %s"
                                           % (self.dest, self.source)})
        self.pending_record = self.running_record = None

    def status(self) -> dict[str, Any]:
        """Return the redirect status as sent over RPC.

        Keys: ``instance``, ``migration`` (UUIDs), ``source``,
        ``destination`` (current), ``destinations`` (every destination,
        oldest first), ``state`` (one of the phase names of this module),
        ``target`` (host being prepared, or None), ``redirects`` (count
        done), ``last_error`` (``{type, message, data}`` of the last
        refused or failed redirect, or None), ``cleanup_pending``
        (failed clean-up steps of an earlier destination not done yet:
        ``{host, step, tries, error, state}``, state ``pending`` or
        ``abandoned``).
        """
        with self.lock:
            return {
                "instance": self.instance_uuid,
                "migration": self.migration.uuid,
                "source": self.source,
                "destination": self.dest,
                "destinations": list(self.destinations),
                "state": self.phase,
                "target": self.target or (
                    self.requested_host if self.phase == REQUESTED
                    else None),
                "redirects": self.redirects,
                "last_error": self.last_error,
                "cleanup_pending": [c.describe() for c in self.cleanup_pending
                                    if c.state != "done"],
            }


class Registry:
    """The live migrations this source runs, plus recently finished ones."""

    def __init__(self, finished_entries: int,
                 history: records.RedirectHistory | None = None,
                 actions: ActionRecorder | None = None,
                 history_per_instance: int = 20,
                 history_instances: int = 1000) -> None:
        """:param history: where redirect records are kept; a new bounded
            one (``history_per_instance``, ``history_instances``) if None.
        :param actions: writes each redirect's Nova instance action.
        """
        self._lock = threading.Lock()
        self._running: dict[str, LiveMigrationRun] = {}
        self._finished: collections.OrderedDict[str, dict[str, Any]] = (
            collections.OrderedDict())
        self._finished_entries = finished_entries
        #: Redirect records of every instance, running and finished.
        self.history = history or records.RedirectHistory(
            history_per_instance, history_instances)
        self.actions = actions
        #: Where runs are persisted once redirected (the driver sets it).
        self.journal: run_journal.RunJournal | None = None
        #: ``progress(instance_uuid) -> dict | None`` of the running
        #: attempt (the driver's, which knows the transport); None: none.
        self.progress: Callable[[str], dict[str, Any] | None] | None = None

    def add(self, run: LiveMigrationRun) -> None:
        run.history = self.history
        run.actions = self.actions
        run.journal = self.journal
        with self._lock:
            self._running[run.instance_uuid] = run
            self._finished.pop(run.instance_uuid, None)

    def get(self, instance_uuid: str) -> LiveMigrationRun | None:
        with self._lock:
            return self._running.get(instance_uuid)

    def finish(self, run: LiveMigrationRun, phase: str) -> None:
        """Forget a run, keeping its last status."""
        self.update_progress(run)
        run.finish(phase)
        run.unpersist()
        status = run.status()
        with self._lock:
            if self._running.get(run.instance_uuid) is run:
                del self._running[run.instance_uuid]
            if self._finished_entries:
                self._finished[run.instance_uuid] = status
                while len(self._finished) > self._finished_entries:
                    self._finished.popitem(last=False)

    def finished_status(self, instance_uuid: str) -> dict[str, Any] | None:
        with self._lock:
            return self._finished.get(instance_uuid)

    def records(self, instance_uuid: str, migration_uuid: str | None = None
                ) -> list[records.RedirectRecord]:
        """The instance's redirect records, newest first; the running
        one with fresh progress."""
        run = self.get(instance_uuid)
        if run is not None:
            self.update_progress(run)
        return self.history.list(instance_uuid, migration_uuid)

    def update_progress(self, run: LiveMigrationRun) -> None:
        """Refresh the progress of the run's running redirect."""
        record = run.running_record
        if self.progress is None or record is None:
            return
        try:
            record.set_progress(self.progress(run.instance_uuid))
        except Exception as err:  # noqa: BLE001 - progress is best effort
            LOG.debug("No progress for redirect %(id)s: %(err)s",
                      {"id": record.id, "err": err})
