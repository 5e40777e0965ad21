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


class WaitingAgents(StatusSource):
    """Agents of RPC 1.5: ``wait_relayed`` answers after ``delay`` s."""

    def __init__(self, *replies: Any, delay: float = 0.0,
                 error: Exception | None = None) -> None:
        super().__init__(*replies)
        self.delay = delay
        self.error = error
        self.waits: list[float] = []

    def supports_relay_wait(self) -> bool:
        return True

    def wait_relayed(self, host: str, migration_id: str, number: int,
                     wait_s: float) -> Any:
        self.waits.append(wait_s)
        if self.error is not None:
            raise self.error
        import time
        time.sleep(self.delay)
        return self.get_status(host, migration_id)


def test_wait_relayed_asks_the_agent_to_wait_when_it_can():
    agents = WaitingAgents(_dst(1), _dst(1, relay_done=True,
                                         source_rate=2e6), delay=0.1)
    done = attempts.wait_relayed(agents, "new", "mid", 1, lambda: True,
                                 timeout=30)
    assert done == attempts.RelayWait(True, False, 2e6)
    # Each call asks the agent to wait up to RELAY_WAIT_S.
    assert agents.waits == [attempts.RELAY_WAIT_S] * 2


def test_wait_relayed_polls_when_the_agent_cannot_wait():
    # An agent older than 1.5 answers the call with an error: polling.
    agents = WaitingAgents(_dst(1), _dst(1, relay_done=True),
                           error=RuntimeError("UnsupportedVersion"))
    done = attempts.wait_relayed(agents, "new", "mid", 1, lambda: True,
                                 timeout=30)
    assert done.relayed
    assert len(agents.waits) == 1 and len(agents.calls) == 2


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


class SocketAgents:
    """Agents that answer prepare_* with a socket path, or refuse."""

    def __init__(self, src_socket: str = "/run/dcmigrate/m.0/s",
                 dst_socket: str = "/run/dcmigrate/m.0/s",
                 error: Exception | None = None) -> None:
        self.src_socket = src_socket
        self.dst_socket = dst_socket
        self.error = error
        self.aborted: list[str] = []

    def prepare_destination(self, *args: Any) -> dict[str, str]:
        return {"socket": self.dst_socket}

    def prepare_source(self, *args: Any) -> dict[str, str]:
        if self.error is not None:
            raise self.error
        return {"socket": self.src_socket}

    def abort(self, host: str, mid: str, reason: str) -> None:
        self.aborted.append(host)


def _prepare(agents: Any) -> str:
    return attempts.prepare_agents(
        agents, "mid", "s", 0, "src", "dst", "10.0.0.2", 4000, [], True,
        None)


def test_prepare_agents_returns_the_common_socket():
    agents = SocketAgents()
    assert _prepare(agents) == agents.src_socket
    assert agents.aborted == []


def test_prepare_agents_refuses_different_socket_dirs():
    agents = SocketAgents(dst_socket="/elsewhere/m.0/s")
    with pytest.raises(attempts.SocketPathMismatch):
        _prepare(agents)
    assert sorted(agents.aborted) == ["dst", "src"]


def test_prepare_agents_raises_refusals_and_aborts_both():
    agents = SocketAgents(error=agent_exception.InvalidRequest(
        migration_id="mid", reason="bad destination address"))
    with pytest.raises(agent_exception.InvalidRequest):
        _prepare(agents)
    assert sorted(agents.aborted) == ["dst", "src"]


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
