"""Moving the frontier while the source and the holders both send.

Lowering is safe at once; a raise must be confirmed by the source, which
clamps it to the lowest held page it already skipped.  These tests drive
the two halves of that exchange directly, with recorded connections.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from nova_dcmigrate.agent import exception
from nova_dcmigrate.agent.page_store import PageStore
from nova_dcmigrate.agent.protocol import FrameType
from nova_dcmigrate.agent import relay_wire as wire
from nova_dcmigrate.agent.destination import DestinationSession
from nova_dcmigrate.agent.source import SourceSession
from tests.unit.agent.harness import make_conf

MID = "6a0c7f0e-4a43-4d8e-9d0b-7c1f4f7a3b11"


class RecordingConn:
    peer = "test-peer"

    def __init__(self) -> None:
        self.sent: list[tuple[FrameType, int]] = []

    def send(self, ftype: FrameType, payload: bytes = b"") -> None:
        self.sent.append((ftype, wire.U64.unpack(payload)[0]))


class _Filter:
    """Stands in for the source's stream filter: records what a raise
    gives back (``completing``: the switchover has begun)."""

    def __init__(self, completing: bool = False) -> None:
        self.completing = completing
        self.emitted: list[int] = []
        self.w = SimpleNamespace(take=lambda: b"pages")

    def emit_assist(self, pages) -> bool:
        if self.completing:
            return False
        self.emitted += [page for _block, page, _data in pages]
        return True


BLOCK = SimpleNamespace(index=0, name="pc.ram")
PAGE = bytes(4096)


def _source(frontier: int, keep: int = 0, **filt) -> SourceSession:
    conf = make_conf(assist_buffer_mib=keep).dcmigrate_agent
    s = SourceSession(conf, MID, "s" * 64, 1, "127.0.0.1", 1)
    s.frontier = frontier
    s.filter = _Filter(**filt)                        # type: ignore
    return s


def _held(s: SourceSession, g: int) -> bool:
    return s.held_page_below_frontier(g, BLOCK, g, PAGE)  # type: ignore


class _Recording(RecordingConn):
    def send(self, ftype: FrameType, payload: bytes = b"") -> None:
        if ftype == FrameType.DATA:
            self.sent.append((ftype, len(payload)))
        else:
            super().send(ftype, payload)


def _move(s: SourceSession, want: int) -> list:
    conn = _Recording()
    s._move_frontier(conn, want)
    assert conn.sent == []          # the forward loop confirms
    s._drain_outbox(conn, s.filter)                   # type: ignore
    return conn.sent


def test_source_lowers_at_once_and_confirms():
    s = _source(500)
    assert _move(s, 200) == [(FrameType.FRONTIER, 200)]
    assert s.frontier == 200


def test_source_raise_is_clamped_to_lowest_skipped_held_page():
    s = _source(100)
    assert _held(s, 50)             # sent by the source
    assert not _held(s, 300)        # skipped, not kept (no budget)
    assert not _held(s, 400)
    # Page 300 was skipped: the holders must still relay it.
    assert _move(s, 1000) == [(FrameType.FRONTIER, 300)]
    assert s.frontier == 300
    assert _held(s, 299)


def test_source_raise_applies_in_full_before_any_skip():
    s = _source(100)
    assert _held(s, 10)
    assert _move(s, 800) == [(FrameType.FRONTIER, 800)]
    assert _held(s, 700)


def test_source_gives_back_kept_pages_before_confirming_a_raise():
    s = _source(100, keep=1)        # 1 MiB: 256 pages
    for g in (300, 400, 900):
        assert not _held(s, g)
    # QEMU sent 400 again with other content: that copy went out as is.
    s.forget_assist(400)
    assert _move(s, 600) == [(FrameType.DATA, 5), (FrameType.FRONTIER, 600)]
    assert s.filter.emitted == [300]                  # type: ignore
    assert s.counters["assist_pages_sent"] == 1
    assert sorted(s.assist) == [900]


def test_source_keeps_pages_within_its_budget_only():
    s = _source(0, keep=1)
    for g in range(10, 10 + 256 + 5):
        assert not _held(s, g)
    assert len(s.assist) == 256
    # 266 was the first page not kept: no raise can pass it.
    sent = _move(s, 10_000)
    # In DATA frames of at most 256 KiB, then the confirmation.
    assert sent == [(FrameType.DATA, 5)] * 5 + [(FrameType.FRONTIER, 266)]
    assert len(s.filter.emitted) == 256               # type: ignore


def test_source_raise_after_first_pass_only_over_kept_pages():
    s = _source(100, keep=0)
    assert not _held(s, 150)
    s.filter.pass1_done = True                        # type: ignore
    assert _move(s, 800) == [(FrameType.FRONTIER, 150)]


def test_source_confirms_old_frontier_once_switchover_began():
    s = _source(100, keep=1, completing=True)
    assert not _held(s, 300)
    assert _move(s, 600) == [(FrameType.FRONTIER, 100)]


class _Puller:
    def __init__(self, index: int) -> None:
        self.index = index
        self.done = threading.Event()
        self.conn = RecordingConn()


@pytest.fixture
def dest():
    conf = make_conf().dcmigrate_agent
    d = DestinationSession(conf, MID, "s" * 64, 1, PageStore(7),
                           holders=[])
    d.pullers = [_Puller(1), _Puller(2)]         # type: ignore
    d.frontier = 500
    d.stops = {1: 500, 2: 500}
    yield d
    d.store.close()


def test_destination_lower_reaches_holders_before_confirmation(dest):
    src = RecordingConn()
    dest._request_frontier(src, 200)
    assert src.sent == [(FrameType.FRONTIER, 200)]
    assert dest.stops == {1: 200, 2: 200}
    for p in dest.pullers:
        assert p.conn.sent == [(FrameType.STOP_AT, 200)]
    dest._frontier_confirmed(src, 200)
    assert dest.frontier == 200 and dest.stops == {1: 200, 2: 200}
    assert all(len(p.conn.sent) == 1 for p in dest.pullers)


def test_destination_raise_waits_for_the_source_and_takes_its_clamp(dest):
    src = RecordingConn()
    dest._request_frontier(src, 900)
    assert dest.stops == {1: 500, 2: 500}          # not yet confirmed
    assert all(not p.conn.sent for p in dest.pullers)
    dest._frontier_confirmed(src, 650)             # source clamped it
    assert dest.frontier == 650
    assert dest.stops == {1: 650, 2: 650}
    for p in dest.pullers:
        assert p.conn.sent == [(FrameType.STOP_AT, 650)]


def test_destination_lower_after_unconfirmed_raise_wins(dest):
    src = RecordingConn()
    dest._request_frontier(src, 900)
    dest._request_frontier(src, 300)
    assert dest.stops == {1: 300, 2: 300}
    dest._frontier_confirmed(src, 900)             # the raise, applied
    # The lower is still in flight: holders must not stop above it.
    assert dest.stops == {1: 300, 2: 300}
    dest._frontier_confirmed(src, 300)
    assert dest.frontier == 300 and dest.stops == {1: 300, 2: 300}


def test_destination_rejects_unsolicited_confirmation(dest):
    with pytest.raises(exception.PeerProtocolError):
        dest._frontier_confirmed(RecordingConn(), 10)


def test_no_frontier_change_after_final(dest):
    src = RecordingConn()
    dest.final_sent = True
    dest._request_frontier(src, 100)
    assert src.sent == [] and dest.stops == {1: 500, 2: 500}


def _dest_with(holders, source_rate):
    conf = make_conf().dcmigrate_agent
    return DestinationSession(conf, MID, "s" * 64, 1, PageStore(7),
                              holders=holders, source_rate=source_rate)


def test_first_plan_uses_rate_hints_only_when_complete():
    a = {"host": "a", "address": "127.0.0.1", "port": 1, "rate": 12.5e6}
    b = {"host": "b", "address": "127.0.0.1", "port": 2, "rate": 25e6}
    assert _dest_with([a, b], 37.5e6)._expected_rates() == (37.5e6, 37.5e6)
    assert _dest_with([a], 37.5e6)._expected_rates() == (37.5e6, 12.5e6)
    no_rate = {k: v for k, v in b.items() if k != "rate"}
    assert _dest_with([a, no_rate], 37.5e6)._expected_rates() == (1.0, 1.0)
    assert _dest_with([a], None)._expected_rates() == (1.0, 1.0)


# -- pages the source sent itself: holders skip them -------------------------
class _Frames:
    peer = "test-peer"

    def __init__(self) -> None:
        self.frames: list[tuple[FrameType, bytes]] = []

    def send(self, ftype: FrameType, payload: bytes = b"") -> None:
        self.frames.append((ftype, bytes(payload)))


def test_destination_sends_each_holder_its_superseded_pages_once(dest):
    import array

    from nova_dcmigrate.agent import plan as planmod

    n = 40
    owners = array.array("h", [1] * 10 + [2] * 10 + [planmod.NONE] * 20)
    layout = SimpleNamespace(total_pages=n)
    dest.planner = planmod.FrontierPlanner(planmod.Assignment(
        layout, owners, bytearray([2] * n),             # type: ignore
        bytearray(n * planmod.DIGEST_LEN)), {1, 2})
    for p in dest.pullers:
        p.conn = _Frames()
    dest.pullers[0].lowest = 6          # holder 1 already relayed 6..9
    dest.pullers[1].lowest = None       # holder 2 has sent nothing yet
    dest.feed = SimpleNamespace(cond=threading.Lock(),  # type: ignore
                                superseded=[2, 7, 12, 30, 2, 15])
    dest._send_skips(dest.planner)
    assert dest.feed.superseded == []
    one, two = (p.conn.frames for p in dest.pullers)
    assert one == [(FrameType.SKIP, wire.encode_g_list([2]))]
    assert two == [(FrameType.SKIP, wire.encode_g_list([12, 15]))]
    assert dest.planner.superseded_pages == 4   # 2, 7, 12, 15
    dest.feed.superseded = [2, 12]              # nothing new
    dest._send_skips(dest.planner)
    assert len(one) == 1 and len(two) == 1


def test_holder_skips_pages_it_has_not_relayed_yet():
    from nova_dcmigrate.agent.holder import HolderRelay

    h = HolderRelay.__new__(HolderRelay)
    h.layout = SimpleNamespace(locate=lambda g: (g // 8, g % 8))
    h._assigned = [bytearray(b"\x01" * 8), bytearray(b"\x01" * 8)]
    h._assigned[1][3] = 0               # not this holder's page
    h.pages_skipped = 0
    h._skip([2, 11, 11, 9])
    assert h._assigned[0][2] == 0 and h._assigned[1][1] == 0
    assert h.pages_skipped == 2


def _planner(n_held: int, holders=(1, 2)):
    import array

    from nova_dcmigrate.agent import plan as planmod

    owners = array.array("h", [holders[0]] * n_held)
    layout = SimpleNamespace(total_pages=n_held)
    return planmod.FrontierPlanner(planmod.Assignment(
        layout, owners, bytearray([2] * n_held),       # type: ignore
        bytearray(n_held * planmod.DIGEST_LEN)), set(holders))


def test_after_first_pass_source_is_asked_for_kept_pages(dest):
    planner = _planner(4000)
    dest.frontier = 500
    dest.stops = {1: 500, 2: 500}
    dest.src_pass1_done = True
    src = RecordingConn()
    # Holders still have [500, 3000) to relay at the source's rate: the
    # source should take about half of it.
    assert dest._assist_pending(src, planner, 3000, 1e6, 1e6)
    (ftype, x), = src.sent
    assert ftype == FrameType.FRONTIER and 1700 <= x <= 1800
    assert dest._assist_pending(src, planner, 3000, 1e6, 1e6)  # in flight
    assert len(src.sent) == 1
    dest._frontier_confirmed(src, x)
    assert dest.stops == {1: x, 2: x}
    # Meanwhile the holders came down close to x: FINAL may go.
    assert not dest._assist_pending(src, planner, x + 300, 1e6, 1e6)


def test_clamped_raise_stops_further_raises(dest):
    planner = _planner(4000)
    dest.src_pass1_done = True
    src = RecordingConn()
    assert dest._assist_pending(src, planner, 3000, 1e6, 1e6)
    dest._frontier_confirmed(src, 520)          # the source kept little
    assert dest._raises_futile
    assert not dest._assist_pending(src, planner, 3000, 1e6, 1e6)
    assert dest.frontier == 520 and dest.stops == {1: 520, 2: 520}


def test_relay_only_never_asks_for_kept_pages(dest):
    dest.split = False
    dest.src_pass1_done = True
    src = RecordingConn()
    assert not dest._assist_pending(src, _planner(4000), 3000, 1e6, 1e6)
    assert src.sent == []


def test_holder_rate_hint_only_when_complete():
    a = {"host": "a", "address": "127.0.0.1", "port": 1, "rate": 12.5e6}
    assert _dest_with([a], 125e6)._holder_rate_hint() == 12.5e6
    assert _dest_with([a], None)._holder_rate_hint() == 0.0
    no_rate = {k: v for k, v in a.items() if k != "rate"}
    assert _dest_with([a, no_rate], 125e6)._holder_rate_hint() == 0.0
