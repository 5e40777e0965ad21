"""Link byte counters: series maths and the sampler thread."""

from __future__ import annotations

import time

import pytest

from nova_dcmigrate.bench import linkstats


def test_rates_and_bytes_between():
    s = linkstats.Series(t0=0.0)
    for i in range(11):             # 1 MB per 0.1 s up, 0.5 MB down
        s.add(i * 0.1, {"src": (i * 1_000_000, i * 500_000)})
    times, rates = s.rates_mbit("src", "up")
    assert len(rates) == 10
    assert rates[0] == pytest.approx(80.0)
    assert times[0] == pytest.approx(0.05)
    assert s.rates_mbit("src", "down")[1][3] == pytest.approx(40.0)
    assert s.bytes_between("src", "up", 0.5) == 5_000_000
    assert s.bytes_between("src", "up", 0.2, 0.4) == 2_000_000
    assert s.bytes_between("nobody", "up", 0.0) == 0
    js = s.to_json()
    assert js["up_bytes"]["src"] == [1_000_000] * 10
    assert len(js["t"]) == 11


def test_read_counters_of_a_missing_port_are_zero():
    assert linkstats.read_counters({"x": "no-such-port-xyz"}) == \
        {"x": (0, 0)}


def test_read_counters_of_loopback():
    up, down = linkstats.read_counters({"lo": "lo"})["lo"]
    assert up >= 0 and down >= 0


def test_sampler_thread_collects_and_reports_latest_rates():
    state = {"n": 0}

    def reader(ports):
        state["n"] += 1
        return {h: (state["n"] * 100_000, 0) for h in ports}

    sampler = linkstats.LinkSampler({"src": "p0"}, interval_s=0.01,
                                    reader=reader)
    series = sampler.start()
    time.sleep(0.2)
    rates = sampler.latest_rates(window_s=0.05)
    assert rates["src"][0] > 0
    assert sampler.stop() is series
    assert len(series.times) >= 5
    assert series.up["src"] == sorted(series.up["src"])
    sampler.stop()                  # idempotent


def test_idle_seconds_adds_up_the_unused_capacity():
    s = linkstats.Series(t0=0.0)
    # 1 MB/s link: full for 1 s, idle for 1 s, half for 1 s.
    down = [0, 1_000_000, 1_000_000, 1_500_000]
    for i, d in enumerate(down):
        s.add(float(i), {"new": (0, d)})
    assert s.idle_seconds("new", "down", 0.0, 3.0, 1e6) == \
        pytest.approx(1.5)
    # Only the part of an interval inside [start, end) counts.
    assert s.idle_seconds("new", "down", 1.5, 2.5, 1e6) == \
        pytest.approx(0.5 + 0.25)
    assert s.idle_seconds("new", "down", 0.0, 1.0, 1e6) == 0.0
    assert s.idle_seconds("nobody", "down", 0.0, 3.0, 1e6) == 0.0
    assert s.idle_seconds("new", "down", 0.0, 3.0, 0.0) == 0.0
