"""The lower bound, link utilisation, medians and ratios (pure maths)."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st
import pytest

from nova_dcmigrate.bench import bound

MBIT = 1e6 / 8       # bytes/s of 1 Mbit/s


def test_source_link_binds_when_holders_are_fast():
    # 50 MB only the source has, 50 MB held; source 100 Mbit/s, old and
    # new 1 Gbit/s: the source's share decides.
    b = bound.lower_bound(50_000_000, 50_000_000, 100 * MBIT, 1000 * MBIT,
                          1000 * MBIT)
    assert b.seconds == pytest.approx(4.0)
    assert b.binding_term == "source upload"
    assert b.terms[1] == pytest.approx(100e6 / (1100 * MBIT))
    assert b.terms[2] == pytest.approx(0.8)
    assert b.total_bytes == 100_000_000


def test_new_destination_download_binds_on_symmetric_links():
    # All links 300 Mbit/s: source and relay share the new host's
    # download, so the bound is what restart needs for the same bytes.
    b = bound.lower_bound(60_000_000, 60_000_000, 300 * MBIT, 300 * MBIT,
                          300 * MBIT)
    assert b.binding_term == "new destination download"
    assert b.seconds == pytest.approx(120e6 / (300 * MBIT))


def test_both_uploads_bind_when_download_is_wide():
    b = bound.lower_bound(10_000_000, 90_000_000, 300 * MBIT, 300 * MBIT,
                          1000 * MBIT)
    assert b.binding_term == "source + holders upload"
    assert b.seconds == pytest.approx(100e6 / (600 * MBIT))


def test_unshaped_links_cost_nothing():
    b = bound.lower_bound(10, 10, math.inf, math.inf, math.inf)
    assert b.seconds == 0.0
    assert bound.bytes_per_s(None) == math.inf
    assert bound.bytes_per_s(8_000_000) == 1_000_000


def test_no_holder_means_source_alone():
    b = bound.lower_bound(100, 0, 10.0, 0.0, 1000.0)
    assert b.seconds == pytest.approx(10.0)


def test_holders_rate_sums_uploads():
    up = {"old": 8_000_000, "new": 16_000_000, "src": 800}
    assert bound.holders_rate(up, ["old", "new"]) == 3_000_000
    assert bound.holders_rate(up, []) == 0.0
    assert bound.holders_rate({"old": None}, ["old"]) == math.inf


def test_invalid_input():
    with pytest.raises(ValueError):
        bound.lower_bound(-1, 0, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError):
        bound.lower_bound(1, 0, 0.0, 1.0, 1.0)


@given(s=st.integers(0, 10**10), h=st.integers(0, 10**10),
       rs=st.floats(1.0, 1e10), ro=st.floats(0.0, 1e10),
       rn=st.floats(1.0, 1e10))
def test_bound_is_the_largest_term_and_monotonic(s, h, rs, ro, rn):
    b = bound.lower_bound(s, h, rs, ro, rn)
    assert b.seconds == max(b.terms)
    assert b.seconds >= (s + h) / rn * (1 - 1e-12)
    assert b.seconds >= s / rs * (1 - 1e-12)
    # More bytes never make the bound smaller.
    assert bound.lower_bound(s + 1, h, rs, ro, rn).seconds >= b.seconds
    assert bound.lower_bound(s, h + 1, rs, ro, rn).seconds >= b.seconds


def test_link_utilisation():
    assert bound.link_utilisation(8.0, 10.0) == pytest.approx(0.8)
    assert bound.link_utilisation(None, 10.0) is None
    assert bound.link_utilisation(8.0, None) is None
    assert bound.link_utilisation(8.0, 0.0) is None


def test_scenario_bound_counts_page_records():
    # 1000 source-only pages over a 100 Mbit/s source, holders fast.
    b = bound.scenario_bound(1000, 5000, 12.5e6, 125e6, 125e6)
    assert b.source_only_bytes == 1000 * 4104
    assert b.held_bytes == 5000 * 4104
    assert b.binding_term == "source upload"
    assert b.seconds == pytest.approx(max(
        1000 * 4104 / 12.5e6, 6000 * 4104 / 137.5e6, 6000 * 4104 / 125e6))


def test_scenario_bound_slow_holder_cannot_lower_it_below_source_alone():
    # Fast source, 100 Mbit/s holder: the bound is at least the time the
    # source-only pages take and at most all pages from the source alone.
    only_src = bound.scenario_bound(0, 0, 125e6, 0.0, 125e6)
    assert only_src.seconds == 0.0
    b = bound.scenario_bound(2000, 30000, 125e6, 12.5e6, 125e6)
    all_from_src = 32000 * 4104 / 125e6
    assert b.seconds <= all_from_src
    assert b.seconds >= 32000 * 4104 / (125e6 + 12.5e6) * (1 - 1e-12)


def test_scenario_bound_new_destination_download_binds():
    b = bound.scenario_bound(10, 100_000, math.inf, math.inf, 12.5e6)
    assert b.binding_term == "new destination download"
    assert b.seconds == pytest.approx(100_010 * 4104 / 12.5e6)


def test_scenario_bound_rejects_bad_input():
    with pytest.raises(ValueError):
        bound.scenario_bound(-1, 0, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError):
        bound.scenario_bound(1, 0, 0.0, 1.0, 1.0)


def test_median_ignores_missing_values():
    assert bound.median([3.0, None, 1.0, 2.0]) == 2.0
    assert bound.median([1.0, 2.0]) == 1.5
    assert bound.median([None, float("nan")]) is None
    assert bound.median([]) is None


def test_ratio():
    assert bound.ratio(5.0, 10.0) == 0.5
    assert bound.ratio(None, 10.0) is None
    assert bound.ratio(5.0, 0.0) is None
    assert bound.ratio(5.0, None) is None
