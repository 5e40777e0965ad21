"""The live-migration run's transition table and its guard."""

from __future__ import annotations

import itertools
import types
from typing import Any

import pytest

from nova_dcmigrate.compute import exception
from nova_dcmigrate.compute import run as run_state


def _run(phase: str = run_state.RUNNING) -> run_state.LiveMigrationRun:
    migration = types.SimpleNamespace(
        uuid="m-1", migration_type="live-migration", status="running")
    run = run_state.LiveMigrationRun("i-1", migration, "src", "dest1",
                                     object(), [])
    run.phase = phase
    return run


ALL_PAIRS = list(itertools.product(sorted(run_state.PHASES), repeat=2))
ILLEGAL = [(a, b) for a, b in ALL_PAIRS
           if b not in run_state.TRANSITIONS[a]]
LEGAL = [(a, b) for a, b in ALL_PAIRS if b in run_state.TRANSITIONS[a]]


def test_table_covers_every_phase() -> None:
    for targets in run_state.TRANSITIONS.values():
        assert targets <= run_state.PHASES
    for phase in run_state.FINAL:
        assert run_state.TRANSITIONS[phase] == frozenset()


@pytest.mark.parametrize("old,new", ILLEGAL)
def test_every_illegal_transition_is_refused(old: str, new: str) -> None:
    run = _run(old)
    with pytest.raises(exception.RunStateError) as err:
        run.move(new)
    assert (err.value.kwargs["state"], err.value.kwargs["new"]) == (old, new)
    assert run.phase == old


@pytest.mark.parametrize("old,new", LEGAL)
def test_every_legal_transition_is_taken(old: str, new: str) -> None:
    run = _run(old)
    run.move(new)
    assert run.phase == new


def test_failed_after_completing_is_refused() -> None:
    # The bug this guards against: a late redirect failure used to force
    # RUNNING after Nova's post-migration had started.
    run = _run(run_state.COMPLETING)
    with pytest.raises(exception.RunStateError):
        run.failed(RuntimeError("late"))
    assert run.phase == run_state.COMPLETING
    # The error is still recorded for the status.
    assert run.last_error is not None
    assert run.last_error["type"] == "RuntimeError"


def test_request_prepare_switch_cycle() -> None:
    run = _run()
    run.request("dest2")
    assert run.take_request() == (True, "dest2")
    assert run.phase == run_state.PREPARING
    assert run.take_request() == (False, None)
    assert run.prepared()
    assert run.stopping
    run.redirected("dest2", "md2")
    assert run.take_switch() == ("dest2", "md2")
    assert (run.phase, run.destinations, run.redirects) == (
        run_state.RUNNING, ["dest1", "dest2"], 1)


def test_redirected_outside_switching_is_refused() -> None:
    run = _run(run_state.PREPARING)
    with pytest.raises(exception.RunStateError):
        run.redirected("dest2", None)
    assert run.destinations == ["dest1"]


def test_abort_drops_a_queued_request() -> None:
    run = _run()
    run.request(None)
    assert not run.defer_abort()
    assert run.phase == run_state.RUNNING
    assert not run.abort_requested
    assert run.abort_sent


def test_abort_without_a_redirect_is_sent_at_once() -> None:
    run = _run()
    assert not run.abort_sent
    assert not run.defer_abort()
    assert run.abort_sent and not run.abort_requested


@pytest.mark.parametrize("phase", [run_state.PREPARING,
                                   run_state.SWITCHING])
def test_abort_is_deferred_during_a_redirect(phase: str) -> None:
    run = _run(phase)
    assert run.defer_abort()
    assert run.abort_requested and run.cancel.is_set()
    assert not run.abort_sent
    # A prepared host is not switched to once an abort is pending.
    run.phase = run_state.PREPARING
    assert not run.prepared()


def test_completing_cancels_a_preparation() -> None:
    run = _run()
    run.request("dest2")
    run.take_request()
    run.completing()
    assert run.cancel.is_set()
    assert not run.prepared()
    run.finish(run_state.COMPLETED)
    with pytest.raises(exception.RunStateError):
        run.request("dest3")


def test_registry_keeps_the_final_status() -> None:
    reg = run_state.Registry(1)
    run = _run()
    reg.add(run)
    reg.finish(run, run_state.ROLLED_BACK)
    assert reg.get("i-1") is None
    status: Any = reg.finished_status("i-1")
    assert status["state"] == run_state.ROLLED_BACK
