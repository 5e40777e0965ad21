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
from nova_dcmigrate.agent.session import DestinationSession
from nova_dcmigrate.agent.session import SourceSession
from tests.unit.agent.harness import make_conf

MID = "6a0c7f0e-4a43-4d8e-9d0b-7c1f4f7a3b11"


class RecordingConn:
    peer = "test-peer"

    def __init__(self) -> None:
        self.sent: list[tuple[FrameType, int]] = []

    def send(self, ftype: FrameType, payload: bytes = b"") -> None:
        self.sent.append((ftype, wire.U64.unpack(payload)[0]))


def _source(frontier: int, pass1_done: bool = False) -> SourceSession:
    conf = make_conf().dcmigrate_agent
    s = SourceSession(conf, MID, "s" * 64, 1, 0, "127.0.0.1", 1)
    s.frontier = frontier
    s.filter = SimpleNamespace(pass1_done=pass1_done)  # type: ignore
    return s


def test_source_lowers_at_once_and_confirms():
    s, conn = _source(500), RecordingConn()
    s._move_frontier(conn, 200)
    assert s.frontier == 200
    assert conn.sent == [(FrameType.FRONTIER, 200)]


def test_source_raise_is_clamped_to_lowest_skipped_held_page():
    s, conn = _source(100), RecordingConn()
    assert s.held_page_below_frontier(50)          # sent by the source
    assert not s.held_page_below_frontier(300)     # skipped
    assert not s.held_page_below_frontier(400)
    s._move_frontier(conn, 1000)
    # Page 300 was skipped: the holders must still relay it.
    assert s.frontier == 300
    assert conn.sent == [(FrameType.FRONTIER, 300)]
    assert s.held_page_below_frontier(299)


def test_source_raise_applies_in_full_before_any_skip():
    s, conn = _source(100), RecordingConn()
    assert s.held_page_below_frontier(10)
    s._move_frontier(conn, 800)
    assert s.frontier == 800 and conn.sent == [(FrameType.FRONTIER, 800)]
    assert s.held_page_below_frontier(700)


def test_source_refuses_raise_after_first_pass():
    s, conn = _source(100, pass1_done=True), RecordingConn()
    s._move_frontier(conn, 800)
    assert s.frontier == 100 and conn.sent == [(FrameType.FRONTIER, 100)]


class _Puller:
    def __init__(self, index: int) -> None:
        self.index = index
        self.done = threading.Event()
        self.conn = RecordingConn()


@pytest.fixture
def dest():
    conf = make_conf().dcmigrate_agent
    d = DestinationSession(conf, MID, "s" * 64, 1, 1, PageStore(7),
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
    return DestinationSession(conf, MID, "s" * 64, 1, 1, PageStore(7),
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
