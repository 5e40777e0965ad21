"""Redirect records follow the run: request, prepare, switch, end.

The run is the real ``LiveMigrationRun`` (no Nova needed); the instance
action recorder is a list-keeping stand-in for
``nova_dcmigrate.compute.events.ActionRecorder`` (which writes through
Nova's conductor: covered in tests/functional/nova/test_api.py).
"""

from __future__ import annotations

import types
from typing import Any

from nova_dcmigrate.compute import exception
from nova_dcmigrate.compute import records
from nova_dcmigrate.compute import run as run_state


class Actions:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def start(self, context: Any, record: records.RedirectRecord) -> None:
        self.calls.append(("start", record.id, record.state.value))

    def finish(self, record: records.RedirectRecord) -> None:
        self.calls.append(("finish", record.id, record.state.value))


def _registry(progress: Any = None) -> tuple[run_state.Registry,
                                             run_state.LiveMigrationRun,
                                             Actions]:
    actions = Actions()
    registry = run_state.Registry(5, actions=actions,
                                  history_per_instance=3)
    registry.progress = progress
    migration = types.SimpleNamespace(
        uuid="m-1", migration_type="live-migration", status="running")
    run = run_state.LiveMigrationRun("i-1", migration, "src", "dest1",
                                     object(), [])
    registry.add(run)
    return registry, run, actions


def _request(run: run_state.LiveMigrationRun,
             host: str | None) -> records.RedirectRecord:
    with run.lock:
        run.check_redirectable(run.migration, host)
        return run.request(host, requested_by="user:u1", reason="why",
                           context=object())


def _switch(run: run_state.LiveMigrationRun, host: str) -> None:
    assert run.take_request() == (True, None if host == "repick" else host)
    assert run.prepared()
    run.redirected(host if host != "repick" else "dest3", object())
    run.take_switch()


def test_a_redirect_that_completes() -> None:
    registry, run, actions = _registry(
        progress=lambda uuid: {"bytes_from_source": 42})
    rec = _request(run, "dest2")
    assert (rec.state, rec.old_destination, rec.new_destination,
            rec.requested_by, rec.reason) == (
        records.RedirectState.REQUESTED, "dest1", "dest2", "user:u1", "why")
    run.take_request()
    assert rec.state is records.RedirectState.PREPARING
    run.prepared()
    run.redirected("dest2", object())
    run.take_switch()
    assert rec.state is records.RedirectState.RUNNING
    assert registry.records("i-1")[0].progress["bytes_from_source"] == 42
    run.completing()
    registry.finish(run, run_state.COMPLETED)
    assert rec.state is records.RedirectState.COMPLETED
    assert rec.finished_at is not None
    assert actions.calls == [("start", rec.id, "requested"),
                             ("finish", rec.id, "completed")]
    # Kept after the run ended.
    assert registry.get("i-1") is None
    assert registry.records("i-1") == [rec]


def test_a_later_redirect_completes_the_earlier_one() -> None:
    registry, run, _ = _registry()
    first = _request(run, "dest2")
    _switch(run, "dest2")
    second = _request(run, None)
    assert second.old_destination == "dest2"
    _switch(run, "repick")
    assert (first.state, second.state, second.new_destination) == (
        records.RedirectState.COMPLETED, records.RedirectState.RUNNING,
        "dest3")
    registry.finish(run, run_state.ROLLED_BACK)
    assert second.state is records.RedirectState.ROLLED_BACK
    assert second.error["code"] == "LiveMigrationRolledBack"
    assert registry.records("i-1") == [second, first]
    assert registry.records("i-1", "other-migration") == []


def test_a_failed_preparation() -> None:
    registry, run, actions = _registry()
    rec = _request(run, "dest2")
    run.take_request()
    run.failed(exception.RedirectPreparationFailed(
        migration="m-1", host="dest2", step="checking", reason="down",
        destination="dest1"))
    assert rec.state is records.RedirectState.FAILED
    assert rec.error["code"] == "RedirectPreparationFailed"
    assert actions.calls[-1] == ("finish", rec.id, "failed")
    # The migration goes on and may be redirected again.
    again = _request(run, "dest3")
    assert again.state is records.RedirectState.REQUESTED
    registry.finish(run, run_state.ROLLED_BACK)
    assert again.state is records.RedirectState.ROLLED_BACK


def test_abort_before_the_redirect_started() -> None:
    registry, run, _ = _registry()
    rec = _request(run, "dest2")
    assert run.defer_abort() is False
    assert (rec.state, rec.error["code"]) == (
        records.RedirectState.ROLLED_BACK, "Aborted")
    registry.finish(run, run_state.ROLLED_BACK)
    assert rec.state is records.RedirectState.ROLLED_BACK


def test_completion_while_preparing_fails_the_redirect() -> None:
    registry, run, _ = _registry()
    rec = _request(run, "dest2")
    run.take_request()
    run.completing()
    registry.finish(run, run_state.COMPLETED)
    assert (rec.state, rec.error["code"]) == (
        records.RedirectState.FAILED, "SwitchingOver")


def test_history_is_bounded_per_instance() -> None:
    registry, run, _ = _registry()
    made = []
    for host in ("dest2", "dest3", "dest4", "dest5"):
        made.append(_request(run, host))
        run.take_request()
        run.failed(exception.RedirectError(reason="no"))
    assert registry.records("i-1") == made[:0:-1]
