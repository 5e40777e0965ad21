"""Attempt bookkeeping shared by the two redirect controllers."""

from __future__ import annotations

from typing import Any

import pytest

from nova_dcmigrate.agent import exception as agent_exception
from nova_dcmigrate.virt import attempts


class StatusSource:
    """Answers ``get_status`` like an ``AgentAPI``: one reply per call
    from a script (the last one repeats); an exception is raised."""

    def __init__(self, *replies: Any) -> None:
        self.replies = list(replies)
        self.calls: list[tuple[str, str]] = []

    def get_status(self, host: str, migration_id: str) -> Any:
        self.calls.append((host, migration_id))
        reply = self.replies.pop(0) if len(self.replies) > 1 else \
            self.replies[0]
        if isinstance(reply, Exception):
            raise reply
        return reply


def _dst(number: int, state: str = "streaming", **redirect: Any) -> dict:
    return {"attempts": [{"attempt": number - 1, "state": "failed"},
                         {"attempt": number, "state": state,
                          "redirect": redirect}]}


def test_holders_newest_first_without_target_repeats_or_dead():
    route = ["a", "b", "a", "c"]
    assert attempts.holders_for(route, "d") == ["c", "a", "b"]
    assert attempts.holders_for(route, "a") == ["c", "b"]
    assert attempts.holders_for(route, "d", dead={"a"}) == ["c", "b"]
    assert attempts.holders_for([], "a") == []


def test_failed_holders_from_relay_flags_only():
    # The error text names holder b, but only the status flags count
    # (errors are never parsed).
    status = {"attempts": [
        {"attempt": 0, "state": "failed",
         "redirect": {"holders": {"x": {"failed": True}}}},
        {"attempt": 1, "state": "failed", "error": "lost holder b: reset",
         "redirect": {"holders": {"a": {"failed": "reset"},
                                  "b": {"failed": None}}}}]}
    agents = StatusSource(status)
    assert attempts.failed_holders(agents, "new", "mid", 1,
                                   ["a", "b", "c"]) == {"a"}
    assert agents.calls == [("new", "mid")]


def test_failed_holders_unknown_when_the_agent_is_unreachable():
    agents = StatusSource(RuntimeError("timeout"))
    assert attempts.failed_holders(agents, "new", "mid", 1, ["a"]) == set()


def test_wait_relayed_returns_when_relays_are_in_with_the_rate():
    agents = StatusSource(RuntimeError("busy"), _dst(1),
                          _dst(1, source_rate=1.5e6),
                          _dst(1, relay_done=True))
    done = attempts.wait_relayed(agents, "new", "mid", 1, lambda: True,
                                 timeout=30)
    assert done == attempts.RelayWait(True, False, 1.5e6)


def test_wait_relayed_stops_when_the_attempt_ends():
    agents = StatusSource(_dst(1), _dst(1, state="failed"))
    done = attempts.wait_relayed(agents, "new", "mid", 1, lambda: True,
                                 timeout=30)
    assert done.ended and not done.relayed
    # ... or when the controller says the attempt no longer runs.
    done = attempts.wait_relayed(StatusSource(_dst(1)), "new", "mid", 1,
                                 lambda: False, timeout=30)
    assert done == attempts.RelayWait(False, True, 0.0)


def test_wait_relayed_gives_up_at_the_deadline():
    done = attempts.wait_relayed(StatusSource(_dst(1)), "new", "mid", 1,
                                 lambda: True, timeout=0.2)
    assert not done.relayed and not done.ended


class PortAgents:
    """prepare_source refuses the first ``taken`` ports it is given."""

    def __init__(self, taken: int, error: Exception | None = None) -> None:
        self.taken = taken
        self.error = error
        self.ports: list[int] = []
        self.aborted: list[str] = []

    def prepare_source(self, host: str, mid: str, secret: str, port: int,
                       *args: Any) -> None:
        self.ports.append(port)
        if self.error is not None:
            raise self.error
        if len(self.ports) <= self.taken:
            raise agent_exception.PortUnavailable(
                migration_id=mid, address="127.0.0.1", port=port,
                reason="Address already in use")

    def prepare_destination(self, *args: Any) -> None:
        pass

    def abort(self, host: str, mid: str, reason: str) -> None:
        self.aborted.append(host)


def _prepare(agents: Any) -> int | None:
    return attempts.prepare_agents(
        agents, "mid", "s", 0, "src", "dst", "10.0.0.2", 4000, [], True,
        None, range(100, 110), [])


def test_prepare_agents_skips_ports_that_are_taken():
    agents = PortAgents(taken=2)
    port = _prepare(agents)
    assert port == agents.ports[-1] and len(set(agents.ports)) == 3


def test_prepare_agents_gives_up_after_port_tries():
    agents = PortAgents(taken=100)
    assert _prepare(agents) is None
    assert len(agents.ports) == attempts.PORT_TRIES


def test_prepare_agents_raises_other_refusals():
    # Another InvalidRequest (not a taken port) is not retried.
    agents = PortAgents(0, agent_exception.InvalidRequest(
        migration_id="mid", reason="bad destination address"))
    with pytest.raises(agent_exception.InvalidRequest):
        _prepare(agents)
    assert len(agents.ports) == 1


def test_wait_relayed_backs_off_and_wakes_on_stop():
    import threading
    import time
    stop = threading.Event()
    agents = StatusSource(_dst(1))
    threading.Timer(0.5, stop.set).start()
    start = time.monotonic()
    done = attempts.wait_relayed(agents, "new", "mid", 1,
                                 lambda: not stop.is_set(), timeout=30,
                                 stop=stop)
    assert done.ended and time.monotonic() - start < 2.0
    # 50 ms growing by half each poll: far fewer than 10 polls in 0.5 s.
    assert len(agents.calls) <= 8
