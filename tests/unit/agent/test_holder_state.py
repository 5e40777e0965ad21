"""HolderRelay's transition table and its guard."""

from __future__ import annotations

import itertools
import threading

import pytest

from nova_dcmigrate.agent import holder
from nova_dcmigrate.exception import MigrationStateError

STATES = list(holder.RelayState)
PAIRS = list(itertools.product(STATES, repeat=2))


def _relay(state: holder.RelayState) -> holder.HolderRelay:
    # Only the state machine is under test: no store, no connection.
    relay = holder.HolderRelay.__new__(holder.HolderRelay)
    relay.migration_id = "m-1"
    relay._cond = threading.Condition()
    relay._state = state
    return relay


@pytest.mark.parametrize(
    "old,new", [(a, b) for a, b in PAIRS if b not in holder.TRANSITIONS[a]])
def test_every_illegal_transition_is_refused(
        old: holder.RelayState, new: holder.RelayState) -> None:
    relay = _relay(old)
    with pytest.raises(MigrationStateError):
        relay._move(new)
    assert relay.state == old.value


@pytest.mark.parametrize(
    "old,new", [(a, b) for a, b in PAIRS if b in holder.TRANSITIONS[a]])
def test_every_legal_transition_is_taken(
        old: holder.RelayState, new: holder.RelayState) -> None:
    relay = _relay(old)
    relay._move(new)
    assert relay.state == new.value


def test_no_way_back_from_an_end() -> None:
    # "done" must never become "failed" (or back to relaying) afterwards.
    for final in (holder.RelayState.DONE, holder.RelayState.FAILED):
        assert holder.TRANSITIONS[final] == frozenset()
