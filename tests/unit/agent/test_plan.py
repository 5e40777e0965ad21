"""The frontier planner: pricing pages nobody holds, superseded pages."""

from __future__ import annotations

import array
import time
from types import SimpleNamespace

from nova_dcmigrate.agent import plan as planmod


def _assignment(owners: list[int], states: list[int]) -> planmod.Assignment:
    n = len(owners)
    layout = SimpleNamespace(total_pages=n)
    return planmod.Assignment(layout,                 # type: ignore
                              array.array("h", owners), bytearray(states),
                              bytearray(n * planmod.DIGEST_LEN))


def _sparse_guest() -> planmod.Assignment:
    # Pages [0, 100) held by holder 1, 10 of them data; [100, 200) held
    # by nobody (the first attempt never got there).
    owners = [1] * 100 + [planmod.NONE] * 100
    states = [2 if g % 10 == 0 else 1 for g in range(100)] + [0] * 100
    return _assignment(owners, states)


def test_unheld_pages_priced_by_the_held_zero_share():
    p = planmod.FrontierPlanner(_sparse_guest(), {1})
    want = (10 * planmod.DATA_COST + 90 * planmod.ZERO_COST) / 100
    assert p.unheld_page_cost == want


def test_nothing_held_prices_unheld_pages_as_data():
    p = planmod.FrontierPlanner(_assignment([planmod.NONE] * 4, [0] * 4),
                                {1})
    assert p.unheld_page_cost == planmod.DATA_COST


def test_first_plan_gives_the_source_held_pages_when_unheld_are_cheap():
    p = planmod.FrontierPlanner(_sparse_guest(), {1})
    # Source twice as fast as the holder: with the sparse unheld part
    # priced like the held part the source takes some held pages ...
    x = p.plan(0, p.total, 2.0, 1.0)
    assert 0 < x < 100
    # ... priced as data pages, the source would get none: a frontier
    # at 0 can never be raised.
    assert p.plan(0, p.total, 2.0, 1.0, planmod.DATA_COST) == 0


def test_superseded_pages_leave_the_holders_work():
    p = planmod.FrontierPlanner(_sparse_guest(), {1})
    before = p.plan(0, p.total, 2.0, 1.0)
    assert p.holder_cost(0, 100) == p.remote_cost(0, 100)
    for g in range(50, 100, 10):            # five data pages rewritten
        assert p.supersede(g)
    assert p.holder_cost(0, 100) == \
        p.remote_cost(0, 100) - 5 * planmod.DATA_COST
    assert p.holder_cost(0, 50) == p.remote_cost(0, 50)
    assert p.superseded_pages == 5
    # Less for the holders to do: the source takes fewer held pages.
    assert p.plan(0, p.total, 2.0, 1.0) < before


def test_supersede_ignores_unheld_and_repeated_pages():
    p = planmod.FrontierPlanner(_sparse_guest(), {1})
    assert not p.supersede(150)             # nobody holds it
    assert p.supersede(3)
    assert not p.supersede(3)
    assert p.superseded_pages == 1
    local = planmod.FrontierPlanner(_sparse_guest(), {2})
    assert not local.supersede(3)           # holder 1 is not remote here


def test_source_past_the_frontier_counts_its_share_from_the_frontier():
    # Frontier 20; the source skipped (and kept) the held pages up to 100
    # and now walks the unheld part.  A raise may only give it held pages
    # from the frontier up, never "everything below where it is".
    p = planmod.FrontierPlanner(_sparse_guest(), {1})
    # Little unheld work left (zero pages), holders still at the top of
    # their part: the source takes some held pages from the frontier up.
    x = p.plan(150, 100, 1.0, 1.0, planmod.ZERO_COST, frontier=20)
    assert 20 < x < 100
    # Plenty of unheld work left (data pages): no raise at all.
    assert p.plan(101, 100, 1.0, 1.0, planmod.DATA_COST, frontier=20) == 20
    # Without the frontier the old rule would answer the source's
    # position: "everything below where it is", past the holders.
    assert p.plan(150, 100, 1.0, 1.0, planmod.ZERO_COST) == 150


def test_after_the_first_pass_only_held_pages_are_balanced():
    p = planmod.FrontierPlanner(_sparse_guest(), {1})
    x = p.plan(p.total, 100, 3.0, 1.0, frontier=0)
    # Three times the holders' rate: about three quarters of the cost.
    share = p.holder_cost(0, x) / p.holder_cost(0, 100)
    assert 0.65 < share < 0.85


# -- never worse than restart: slow holders get nothing ----------------------
def _held_guest(n: int = 400) -> planmod.Assignment:
    # Every page held by holder 1, all data.
    return _assignment([1] * n, [2] * n)


def test_holders_help_only_above_the_minimum_share():
    assert planmod.holders_help(100.0, 100.0)
    assert planmod.holders_help(100.0, 12.0)          # 10.7 %
    assert not planmod.holders_help(125e6, 12.5e6)    # 1 Gbit vs 100 Mbit
    assert not planmod.holders_help(100.0, 0.0)
    assert planmod.holders_help(0.0, 1.0)             # no source measure


def test_fast_source_slow_holder_gives_the_holders_nothing():
    p = planmod.FrontierPlanner(_held_guest(), {1})
    # First plan from the hints: the frontier at the top, so the holders
    # relay nothing and the source sends every held page itself.
    assert p.plan(0, p.total, 125e6, 12.5e6) == p.total
    # Re-planned while the holders are half way down: nothing more.
    assert p.plan(100, 250, 125e6, 12.5e6, frontier=120) == 250


def test_comparable_holders_still_share_the_work():
    p = planmod.FrontierPlanner(_held_guest(), {1})
    x = p.plan(0, p.total, 37.5e6, 37.5e6)
    assert 0 < x < p.total
    # A holder at a fifth of the source's rate still gets a share.
    y = p.plan(0, p.total, 50e6, 10e6)
    assert x < y < p.total


def test_replanning_brings_slow_holders_back_when_the_source_slows():
    p = planmod.FrontierPlanner(_held_guest(), {1})
    first = p.plan(0, p.total, 125e6, 12.5e6)
    assert first == p.total
    # Measured: the source only moves 10 MB/s; the holder's hint is
    # 12.5 MB/s: the frontier comes down (always safe).
    again = p.plan(50, p.total, 10e6, 12.5e6, frontier=first)
    assert again < first


def test_holders_not_contacted_when_the_hints_give_them_nothing():
    # 1 Gbit source, 100 Mbit holder: the first plan would give it
    # nothing, so its inventory is not worth reading.
    assert not planmod.holders_worth_contacting(125e6, [12.5e6])
    # Two such holders together carry more than the minimum share.
    assert planmod.holders_worth_contacting(125e6, [12.5e6, 12.5e6])
    assert planmod.holders_worth_contacting(37.5e6, [12.5e6])   # (e)
    assert planmod.holders_worth_contacting(12.5e6, [125e6])    # (b')


def test_holders_contacted_without_complete_hints():
    # Nothing known: the measured rates decide, as before.
    assert planmod.holders_worth_contacting(None, [12.5e6])
    assert planmod.holders_worth_contacting(125e6, [])
    assert planmod.holders_worth_contacting(125e6, [12.5e6, 0.0])
    assert planmod.holders_worth_contacting(0.0, [1.0])


def test_no_cpu_headroom_gives_the_holders_nothing():
    assert planmod.holders_help(37.5e6, 37.5e6, cpu_busy=0.5)
    assert not planmod.holders_help(37.5e6, 37.5e6, cpu_busy=0.95)
    p = planmod.FrontierPlanner(_held_guest(), {1})
    assert p.plan(0, p.total, 37.5e6, 37.5e6, cpu_busy=0.95) == p.total
    assert p.plan(0, p.total, 37.5e6, 37.5e6, cpu_busy=0.3) < p.total


def test_cpu_meter_share_of_a_core():
    clock = [0.0]
    meter = planmod.CpuMeter(lambda: clock[0], window=10.0)
    t0 = time.monotonic()
    assert meter.sample() is None            # one sample: no span yet
    time.sleep(0.25)
    clock[0] = 0.5 * (time.monotonic() - t0)
    busy = meter.sample()
    assert busy is not None and 0.4 < busy < 0.6
