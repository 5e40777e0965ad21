"""When redirects fire (RedirectSchedule) and run order."""

from __future__ import annotations

import pytest

from nova_dcmigrate.bench import methods
from nova_dcmigrate.bench import options
from nova_dcmigrate.bench import runner


def test_first_redirect_follows_bytes_of_the_first_attempt():
    s = methods.RedirectSchedule((0.5,), ("old", "new"), 200_000_000)
    assert not s.due(0.0, 10**9)            # not started
    s.start(10.0)
    assert not s.due(11.0, 99_999_999)
    assert s.due(11.0, 100_000_000)
    assert s.next_host() == "new"
    s.fired(12.0)
    assert s.remaining == 0
    assert not s.due(100.0, 10**12)
    assert s.fraction_of(50_000_000) == 0.25


def test_later_redirects_follow_the_first_attempts_pace():
    route = ("old", "new", "new2", "new3")
    s = methods.RedirectSchedule((0.3, 0.6, 0.9), route, 100)
    s.start(0.0)
    assert s.due(3.0, 30)
    s.fired(3.0)                 # 0.3 of a pass took 3 s
    assert s.next_host() == "new2"
    assert not s.due(5.9, 0)     # 0.6 is due at 6 s, whatever the bytes
    assert s.due(6.01, 0)
    s.fired(6.01)
    assert s.next_host() == "new3"
    assert s.due(9.01, 0)
    assert s.skip_rest() == [0.9]
    assert s.remaining == 0


def test_route_must_match_fractions():
    with pytest.raises(ValueError):
        methods.RedirectSchedule((0.5,), ("new",), 1)


def test_run_order_interleaves_repeats_and_seed_shuffles():
    cfg = options.config_from_args(options.build_parser().parse_args(
        ["--methods", "dcmigrate,restart,direct", "--repeat", "2"]))
    assert runner.run_order(cfg) == [
        (1, "dcmigrate"), (1, "restart"), (1, "direct"),
        (2, "dcmigrate"), (2, "restart"), (2, "direct")]
    seeded = options.config_from_args(options.build_parser().parse_args(
        ["--methods", "dcmigrate,restart,direct", "--repeat", "4",
         "--seed", "7"]))
    order = runner.run_order(seeded)
    assert order == runner.run_order(seeded)          # reproducible
    for rep in range(1, 5):
        assert sorted(m for r, m in order if r == rep) == \
            ["dcmigrate", "direct", "restart"]


def test_first_pass_estimate_and_page_count():
    page = bytes(4096)
    data = page + b"\x01" + bytes(4095) + page + bytes(4095) + b"\x02"
    assert runner.count_pages(data) == (2, 2)
    assert runner.first_pass_bytes(2, 2) == 2 * 4104 + 2 * 9
