"""Redirect, resume and relay through real agents on loopback.

The source "QEMU" replays streams built to model a guest whose memory
keeps changing between and during attempts; the new destination's "QEMU"
records what it receives.  Decoding that must give exactly the source's
final memory, whatever came from the source and whatever was relayed.
"""

from __future__ import annotations

import random
import secrets
import time
import uuid

import pytest

from nova_dcmigrate.agent.manager import AgentManager
from nova_dcmigrate.agent.session import SessionState
from tests.unit.agent.harness import FakeDestQemu
from tests.unit.agent.harness import FakeSourceQemu
from tests.unit.agent.harness import make_conf
from tests.unit.agent.test_session import wait_state
from tests.unit.stream import streamgen

BLOCKS = {"pc.ram": 1024 * 4096, "pc.bios": 16 * 4096}


class Guest:
    """Memory of the modelled guest and the streams QEMU would send."""

    def __init__(self, seed: int = 3) -> None:
        self.rng = random.Random(seed)
        self.mem: dict[tuple[str, int], bytes | None] = {}
        for name, length in BLOCKS.items():
            for page in range(length // 4096):
                self.mem[(name, page)] = (
                    None if self.rng.random() < 0.2
                    else streamgen.page_data(self.rng))

    def dirty(self, fraction: float) -> list[tuple[str, int]]:
        keys = self.rng.sample(sorted(self.mem), int(len(self.mem)
                                                     * fraction))
        for k in keys:
            self.mem[k] = streamgen.page_data(self.rng)
        return keys

    def pass1(self) -> list:
        return [(n, p, self.mem[(n, p)]) for (n, p) in
                sorted(self.mem, key=lambda k: (list(BLOCKS).index(k[0]),
                                                k[1]))]

    def stream(self, extra_passes: int = 2) -> streamgen.SyntheticStream:
        writes = self.pass1()
        for _ in range(extra_passes):
            for k in self.dirty(0.03):
                writes.append((k[0], k[1], self.mem[k]))
        return streamgen.build_stream(BLOCKS, writes,
                                      records_per_section=64)

    def expect(self) -> dict[str, dict[int, bytes]]:
        out: dict[str, dict[int, bytes]] = {n: {} for n in BLOCKS}
        for (n, p), d in self.mem.items():
            out[n][p] = streamgen.ZERO_PAGE if d is None else d
        return out


class Cluster:
    def __init__(self, names=("src", "a", "b", "c"), **conf) -> None:
        self.agents = {}
        for n in names:
            m = AgentManager(make_conf(chunk_size=16384,
                                       socket_buffer=65536,
                                       **conf).dcmigrate_agent,
                             n)
            m.start()
            self.agents[n] = m
        self.mid = str(uuid.uuid4())
        self.secret = secrets.token_hex(32)
        self.attempt = 0

    def holder(self, name: str) -> dict:
        return {"host": name, "address": "127.0.0.1",
                "port": self.agents[name].listener.port}

    def migrate(self, dest: str, data: bytes, holders=(), stop_after=None,
                chunk=65536, pause=None, dest_args=()):
        """:param holders: host names, or holder dicts (e.g. with a
            ``rate`` hint); :param dest_args: further positional arguments
            of ``prepare_destination`` (split, source_rate)."""
        att = self.attempt
        self.attempt += 1
        dq = FakeDestQemu()
        d = self.agents[dest].prepare_destination(
            None, self.mid, self.secret, None, att,
            [h if isinstance(h, dict) else self.holder(h)
             for h in holders], *dest_args)
        dq.listen(d["socket"])
        listen = self.agents["src"].prepare_source(
            None, self.mid, self.secret, "127.0.0.1",
            self.agents[dest].listener.port, att)["socket"]
        sq = FakeSourceQemu(listen, data, chunk=chunk,
                            stop_after=stop_after, pause=pause).start()
        src = self.agents["src"].sessions[(self.mid, att)]
        dst = self.agents[dest].sessions[(self.mid, att)]
        final = SessionState.FAILED if stop_after else \
            SessionState.COMPLETED
        assert wait_state(src, {SessionState.COMPLETED,
                                SessionState.FAILED}, 30) == final, src.error
        wait_state(dst, {SessionState.COMPLETED, SessionState.FAILED,
                         SessionState.ABORTED}, 30)
        sq.thread.join(10)
        dq.thread.join(10)
        return src, dst, dq

    def stop(self):
        for m in self.agents.values():
            m.stop()


@pytest.fixture
def cluster():
    c = Cluster()
    yield c
    c.stop()


@pytest.fixture
def early_cluster():
    """Agents that connect to the holders (and plan) when prepared."""
    c = Cluster(connect_holders_early=True)
    yield c
    c.stop()


def _decode(dq: FakeDestQemu):
    return streamgen.decode(bytes(dq.received)).final


@pytest.mark.parametrize("cut", [0.3, 0.7])
def test_redirect_relays_from_old_destination(cluster, cut):
    g = Guest()
    s0 = g.stream(extra_passes=0)
    cluster.migrate("a", s0.data, stop_after=int(len(s0.data) * cut))
    held = cluster.agents["a"].stores[cluster.mid].counters().pages
    assert held > 0
    g.dirty(0.05)                       # the guest ran on meanwhile
    s1 = g.stream()
    src, dst, dq = cluster.migrate("b", s1.data, holders=["a"])
    assert dst.state == SessionState.COMPLETED, dst.error
    assert _decode(dq) == g.expect()
    st = dst.status()["redirect"]
    assert st["relay_done"]
    assert st["relay_pages_injected"] > 0
    # Only what B could not get from A crossed the source's link.
    assert src.counters["pages_dropped"] > 0
    assert src.counters["bytes_sent"] < len(s1.data)
    a = st["holders"]["a"]
    assert a["injected"] + src.counters["held_pages_forwarded"] > 0
    # What B needed, by final content, for the benchmark's bound.
    store_a = cluster.agents["a"].stores[cluster.mid]
    nonzero = [(n, p, d) for (n, p), d in g.mem.items() if d is not None]
    held = sum(1 for n, p, d in nonzero
               if store_a.state(n, p) == 2 and bytes(store_a.page(n, p)) == d)
    assert st["needed"] == {"nonzero": len(nonzero),
                            "source_only": len(nonzero) - held,
                            "held": held, "local": 0}
    assert 0 < held < len(nonzero)


def test_two_redirects_and_back_to_first_destination(cluster):
    g = Guest(seed=5)
    s0 = g.stream(extra_passes=0)
    cluster.migrate("a", s0.data, stop_after=len(s0.data) // 3)
    g.dirty(0.05)
    s1 = g.stream(extra_passes=0)
    cluster.migrate("b", s1.data, holders=["a"],
                    stop_after=len(s1.data) // 2)
    g.dirty(0.05)
    s2 = g.stream()
    # Third attempt to C: both A and B hold pages.
    src, dst, dq = cluster.migrate("c", s2.data, holders=["a", "b"],
                                   stop_after=len(s2.data) // 2)
    g.dirty(0.05)
    s3 = g.stream()
    # Back to A, which holds pages from attempt 0 and may reuse them.
    src, dst, dq = cluster.migrate("a", s3.data, holders=["b", "c"])
    assert dst.state == SessionState.COMPLETED, dst.error
    assert _decode(dq) == g.expect()
    red = dst.status()["redirect"]
    assert red["local_pages_injected"] > 0
    assert src.counters["pages_dropped"] > 0


def test_resume_same_destination_sends_only_what_it_lacks(cluster):
    g = Guest(seed=7)
    s0 = g.stream(extra_passes=0)
    cluster.migrate("a", s0.data, stop_after=len(s0.data) // 2)
    g.dirty(0.02)
    s1 = g.stream()
    src, dst, dq = cluster.migrate("a", s1.data)      # retry, no holders
    assert dst.state == SessionState.COMPLETED, dst.error
    assert _decode(dq) == g.expect()
    assert dst.status()["redirect"]["local_pages_injected"] > 0
    assert src.counters["pages_dropped"] > 0


def test_holder_dies_mid_relay_attempt_fails_then_retry_without_it(cluster):
    g = Guest(seed=9)
    s0 = g.stream(extra_passes=0)
    cluster.migrate("a", s0.data, stop_after=int(len(s0.data) * 0.8))
    s1 = g.stream()
    # Holder A disappears while B pulls from it.
    cluster.agents["a"].listener.stop()
    att = cluster.attempt
    src, dst, dq = cluster.migrate("b", s1.data, holders=["a"],
                                   stop_after=len(s1.data))
    assert dst.state == SessionState.FAILED
    assert src.state == SessionState.FAILED
    # Retry counting only holders that are alive (none): a full resend
    # plus what B itself holds (nothing) -> still exact.
    s2 = g.stream()
    src, dst, dq = cluster.migrate("b", s2.data)
    assert dst.state == SessionState.COMPLETED, dst.error
    assert _decode(dq) == g.expect()
    del att


def test_relay_only_mode_sends_no_held_page_from_source(cluster):
    g = Guest(seed=11)
    s0 = g.stream(extra_passes=0)
    cluster.migrate("a", s0.data, stop_after=len(s0.data) // 2)
    s1 = g.stream()
    src, dst, dq = cluster.migrate("b", s1.data, holders=["a"],
                                   dest_args=(False,))
    assert src.state == SessionState.COMPLETED, src.error
    assert _decode(dq) == g.expect()
    assert src.counters["held_pages_forwarded"] == 0
    assert dst.frontier == 0


def test_slow_source_fast_holder_relays_everything_before_final(cluster):
    # The source skips held pages at local speed and overtakes the
    # holder; no page it skipped may be left for the FINAL request.
    g = Guest(seed=13)
    s0 = g.stream(extra_passes=0)
    cluster.migrate("a", s0.data, stop_after=int(len(s0.data) * 0.9))
    s1 = g.stream(extra_passes=0)
    src, dst, dq = cluster.migrate("b", s1.data, holders=["a"], chunk=2048)
    assert dst.state == SessionState.COMPLETED, dst.error
    assert _decode(dq) == g.expect()
    assert dst.frontier <= dst.planner.total


def _slow_holders(monkeypatch):
    """Holders relay about 400 pages/s in small batches: a slow link, not
    a stall."""
    from nova_dcmigrate.agent import holder as holder_mod

    flush = holder_mod.HolderRelay._flush

    def slow_flush(self, batch):
        if batch:
            time.sleep(0.01)
        flush(self, batch)

    monkeypatch.setattr(holder_mod, "BATCH_BYTES", 4 * 4096)
    monkeypatch.setattr(holder_mod.HolderRelay, "_flush", slow_flush)


def test_slow_holder_source_gives_back_kept_pages_after_first_pass(
        cluster, monkeypatch):
    # The old destination relays slowly (a slow link); the source is done
    # with its first pass at once and QEMU waits for the switchover, so
    # the new destination raises the frontier past where the source
    # already was: the source sends the held pages it kept itself.
    from nova_dcmigrate.stream import constants as sc

    _slow_holders(monkeypatch)
    g = Guest(seed=17)
    s0 = g.stream(extra_passes=0)
    cluster.migrate("a", s0.data, stop_after=int(len(s0.data) * 0.9))
    s1 = g.stream()
    switchover = s1.data.rfind(sc.COMMAND_HEADER.pack(
        sc.SECTION_COMMAND, sc.CMD_SWITCHOVER_START, 0))
    assert switchover > 0
    src, dst, dq = cluster.migrate("b", s1.data, holders=["a"],
                                   pause=(switchover, 2.0))
    assert dst.state == SessionState.COMPLETED, dst.error
    assert _decode(dq) == g.expect()
    assert src.counters.get("assist_pages_sent", 0) > 0
    assert dst.frontier > dst.first_frontier
    held_above = sum(1 for x in range(dst.first_frontier, dst.planner.total)
                     if dst.assignment.owner[x] == 1)
    assert dst.pullers[0].pages < held_above


@pytest.fixture
def counting_cluster():
    """Agents that count the needed pages also without their holders."""
    c = Cluster(count_needed_pages=True)
    yield c
    c.stop()


def _redirect_to_b_with_slow_holder(cluster, seed, pause_s=None):
    """A first attempt to "a" cut at 60%, the guest dirtied, then a
    redirect to "b" whose holder "a" is hinted at 1/100 of the source's
    rate (``pause_s``: the source QEMU pauses that long half way).
    Returns (guest, source, destination, destination QEMU)."""
    g = Guest(seed=seed)
    s0 = g.stream(extra_passes=0)
    cluster.migrate("a", s0.data, stop_after=int(len(s0.data) * 0.6))
    g.dirty(0.05)
    s1 = g.stream()
    slow = dict(cluster.holder("a"), rate=1e6)
    pause = None if pause_s is None else (len(s1.data) // 2, pause_s)
    return (g, *cluster.migrate("b", s1.data, holders=[slow],
                                dest_args=(True, 100e6), pause=pause))


def test_skipped_holders_are_not_contacted_by_default(cluster):
    # Without count_needed_pages the holder is never connected: no
    # inventory crosses its link, nothing is counted.
    g, src, dst, dq = _redirect_to_b_with_slow_holder(cluster, 23)
    assert dst.state == SessionState.COMPLETED, dst.error
    assert _decode(dq) == g.expect()
    assert dst.holders_skipped
    time.sleep(0.3)
    red = dst.status()["redirect"]
    assert red["needed"] is None
    assert (cluster.mid, 1) not in cluster.agents["a"].relays


def test_fast_source_slow_holder_hint_gives_the_holder_nothing(
        counting_cluster):
    cluster = counting_cluster
    # Never worse than restart: a holder at 1/100 of the source's rate
    # gets nothing, not even a relay connection on the source's path:
    # the attempt runs as a restart would (no plan, no filtering), and
    # the destination still gets exactly the guest's memory.
    # QEMU pauses half way (a stream that lasts): the background count
    # ends with the session.
    g, src, dst, dq = _redirect_to_b_with_slow_holder(
        cluster, 19, pause_s=1.0)
    assert src.state == SessionState.COMPLETED, src.error
    assert dst.state == SessionState.COMPLETED, dst.error
    assert _decode(dq) == g.expect()
    assert dst.holders_skipped and dst.planner is None
    red = dst.status()["redirect"]
    assert red["holders_skipped"] and red["relay_done"]
    assert red["relay_pages_injected"] == 0 and red["holders"] == {}
    assert "holders_skipped_s" in red["timeline"]
    # The source got no plan: it forwarded QEMU's stream as is.
    assert src.counters.get("pages_dropped", 0) == 0
    assert src.counters.get("held_pages_forwarded", 0) == 0
    # The holder's inventory was still read (nothing relayed), to count
    # what the new destination needed.
    deadline = time.monotonic() + 10
    while red["needed"] is None and time.monotonic() < deadline:
        time.sleep(0.05)
        red = dst.status()["redirect"]
    assert red["needed"]["held"] > 0 and red["needed"]["source_only"] > 0
    assert red["first_frontier"] == red["frontier"] > 0
    relay = cluster.agents["a"].relays[(cluster.mid, 1)]
    assert relay.pages_sent == 0


def test_fast_source_slow_holder_relay_only_still_relays(cluster):
    # relay-only (split off) relays every held page whatever the hints.
    g = Guest(seed=23)
    s0 = g.stream(extra_passes=0)
    cluster.migrate("a", s0.data, stop_after=int(len(s0.data) * 0.6))
    s1 = g.stream()
    slow = dict(cluster.holder("a"), rate=1e6)
    src, dst, dq = cluster.migrate("b", s1.data, holders=[slow],
                                   dest_args=(False, 100e6))
    assert dst.state == SessionState.COMPLETED, dst.error
    assert _decode(dq) == g.expect()
    assert not dst.holders_skipped
    assert dst.status()["redirect"]["relay_pages_injected"] > 0


def test_early_holder_connection_same_result(early_cluster):
    """connect_holders_early: holders connected and the plan computed at
    prepare time (B holds nothing), or only the holders connected (back
    to A, which holds pages): the same final memory."""
    cluster = early_cluster
    g = Guest(seed=7)
    s0 = g.stream(extra_passes=0)
    cluster.migrate("a", s0.data, stop_after=len(s0.data) // 2)
    g.dirty(0.05)
    s1 = g.stream(extra_passes=0)
    src, dst, dq = cluster.migrate("b", s1.data, holders=["a"],
                                   stop_after=len(s1.data) // 2)
    assert dst._early_done is not None and dst._early_done.is_set()
    assert dst.status()["redirect"]["relay_pages_injected"] > 0
    g.dirty(0.05)
    s2 = g.stream()
    src, dst, dq = cluster.migrate("a", s2.data, holders=["b"])
    assert dst.state == SessionState.COMPLETED, dst.error
    assert _decode(dq) == g.expect()
    assert dst.status()["redirect"]["local_pages_injected"] > 0
    assert src.counters["pages_dropped"] > 0


def test_wait_relayed_answers_once_the_relays_are_in(cluster, monkeypatch):
    # A slow holder (about 400 pages/s): the relays take a while, and the
    # agent's answer must come as they end, not before, not a poll later.
    import threading

    _slow_holders(monkeypatch)
    g = Guest(seed=29)
    s0 = g.stream(extra_passes=0)
    cluster.migrate("a", s0.data, stop_after=int(len(s0.data) * 0.5))
    s1 = g.stream()
    b = cluster.agents["b"]
    answers = []

    def waiter():
        deadline = time.monotonic() + 10
        while (cluster.mid, 1) not in b.sessions and \
                time.monotonic() < deadline:
            time.sleep(0.002)
        status = b.wait_relayed(None, cluster.mid, 1, 10.0)
        answers.append((time.monotonic(), status))

    t = threading.Thread(target=waiter)
    t.start()
    src, dst, dq = cluster.migrate("b", s1.data, holders=["a"],
                                   pause=(len(s1.data) - 64, 2.0))
    t.join(15)
    assert dst.state == SessionState.COMPLETED, dst.error
    assert _decode(dq) == g.expect()
    when, status = answers[0]
    entry = [a for a in status["attempts"] if a["attempt"] == 1][0]
    assert entry["redirect"]["relay_done"]
    relays_end = dst.started_at + dst.timeline["relays_done_s"]
    assert relays_end - dst.started_at > 0.3      # it had to wait
    assert abs(when - relays_end) < 0.2


def test_wait_relayed_gives_up_after_its_wait_and_checks_input(cluster):
    from nova_dcmigrate.agent import exception as agent_exc

    b = cluster.agents["b"]
    b.prepare_destination(None, cluster.mid, cluster.secret, None, 0,
                          [cluster.holder("a")])
    start = time.monotonic()
    status = b.wait_relayed(None, cluster.mid, 0, 0.3)
    assert time.monotonic() - start >= 0.3
    assert not status["attempts"][0]["redirect"]["relay_done"]
    # No session of that attempt: the status at once.
    start = time.monotonic()
    b.wait_relayed(None, cluster.mid, 5, 3.0)
    assert time.monotonic() - start < 1.0
    for attempt, wait_s in ((-1, 1.0), (True, 1.0), ("0", 1.0),
                            (0, -1.0), (0, float("nan")), (0, True),
                            (0, "1")):
        with pytest.raises(agent_exc.InvalidRequest):
            b.wait_relayed(None, cluster.mid, attempt, wait_s)
    b.abort(None, cluster.mid, "test over")
