"""The arithmetic DCMigrateWeigher applies to each candidate host."""

from __future__ import annotations

import pytest

from nova_dcmigrate.scheduler import scores

IDLE = scores.HostLoad(num_io_ops=0, vcpus_used=0, vcpus_total=16,
                       cpu_allocation_ratio=4.0)


def test_holder_score():
    assert scores.holder_score("old1", frozenset({"old1"})) == 1.0
    assert scores.holder_score("new1", frozenset({"old1"})) == 0.0
    assert scores.holder_score("new1", frozenset()) == 0.0


def test_link_rates_relative_to_best_candidate():
    hosts = ["a", "b", "c", "d"]
    rates = {"a": 100.0, "b": 25.0, "c": 0.0, "other": 1000.0}
    # "other" is not a candidate: it does not set the scale. "d" has no
    # measurement and scores like a dead link.
    assert scores.link_rate_scores(hosts, rates) == [1.0, 0.25, 0.0, 0.0]


@pytest.mark.parametrize("rates", [{}, {"a": 0.0}, {"x": 5.0}])
def test_link_rates_without_positive_measurement_are_all_zero(rates):
    assert scores.link_rate_scores(["a", "b"], rates) == [0.0, 0.0]


def test_link_rates_no_hosts():
    assert scores.link_rate_scores([], {"a": 1.0}) == []


@pytest.mark.parametrize("load, expected", [
    (IDLE, 1.0),
    # I/O half full (4 of 8), no vCPUs: 1 - (0.5 + 0) / 2.
    (scores.HostLoad(4, 0, 16, 4.0), 0.75),
    # 32 of 16 * 4 vCPUs allocated: cpu 0.5.
    (scores.HostLoad(0, 32, 16, 4.0), 0.75),
    # Both over their limits: clamped to 1 each.
    (scores.HostLoad(20, 100, 16, 4.0), 0.0),
    # Unknown allocation ratio counts as 1.0: 8 of 16.
    (scores.HostLoad(0, 8, 16, None), 0.75),
    # A host that reports no vCPUs: the vCPU load is unknown, counts as 0.
    (scores.HostLoad(8, 5, 0, 1.0), 0.5),
])
def test_load_score(load, expected):
    assert scores.load_score(load, max_io_ops_per_host=8) == expected


def test_load_score_zero_io_limit_ignores_io():
    assert scores.load_score(scores.HostLoad(3, 0, 16, 1.0), 0) == 1.0


def test_combine_weights_each_component_by_its_multiplier():
    m = scores.Multipliers(holder=5.0, link_rate=2.0, load=1.0)
    assert scores.combine(1.0, 0.5, 0.25, m) == 5.0 + 1.0 + 0.25
    assert scores.combine(0.0, 0.0, 0.0, m) == 0.0
    negative = scores.Multipliers(holder=-1.0, link_rate=0.0, load=1.0)
    assert scores.combine(1.0, 1.0, 1.0, negative) == 0.0


def test_default_multipliers_let_a_holder_beat_a_faster_idle_host():
    from nova_dcmigrate.conf import scheduler as conf_scheduler

    defaults = {o.name: o.default for o in conf_scheduler.OPTS}
    m = scores.Multipliers(
        holder=defaults["holder_weight_multiplier"],
        link_rate=defaults["link_rate_weight_multiplier"],
        load=defaults["load_weight_multiplier"])
    # A busy holder on the slowest measured link against an idle host on
    # the fastest link.
    holder = scores.combine(1.0, 0.0, 0.0, m)
    other = scores.combine(0.0, 1.0, 1.0, m)
    assert holder > other
