"""The scheduler-hint format shared by repick and DCMigrateWeigher."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st
import pytest

from nova_dcmigrate.scheduler import hints

HOST = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.-_",
               min_size=1, max_size=20)


def test_holders_round_trip_sorted_and_unique():
    value = hints.encode_holders(["old2", "old1", "old2"])
    assert value == ["old1", "old2"]
    assert hints.decode_holders(value) == {"old1", "old2"}


@pytest.mark.parametrize("value, expected", [
    (None, set()),
    ([], set()),
    ("old1", {"old1"}),                      # bare string
    (["old1"], {"old1"}),                    # one-element list, as stored
    (["old1,old2", " old3 "], {"old1", "old2", "old3"}),  # CLI comma form
    ("old1, ,old2,", {"old1", "old2"}),
])
def test_decode_holders_accepts_every_api_shape(value, expected):
    assert hints.decode_holders(value) == expected


@pytest.mark.parametrize("bad", ["", "a,b", "a=b", " a"])
def test_encode_holders_rejects_names_that_would_not_decode(bad):
    with pytest.raises(ValueError):
        hints.encode_holders([bad])


def test_link_rates_round_trip():
    rates = {"new2": 12.5e6, "new1": 125e6, "zero": 0.0}
    value = hints.encode_link_rates(rates)
    assert value == ["new1=125000000.0", "new2=12500000.0", "zero=0.0"]
    assert all(isinstance(v, str) for v in value)
    assert hints.decode_link_rates(value) == rates


@pytest.mark.parametrize("rate", [-1.0, math.nan, math.inf])
def test_encode_link_rates_rejects_bad_rates(rate):
    with pytest.raises(ValueError, match="invalid link rate"):
        hints.encode_link_rates({"h": rate})


def test_decode_link_rates_skips_malformed_entries_and_last_wins(caplog):
    value = ["a=10", "b", "=5", "c=fast", "d=-1", "e=nan", "a=20,f=1e3"]
    assert hints.decode_link_rates(value) == {"a": 20.0, "f": 1000.0}
    logged = caplog.text
    for entry in ("'b'", "'=5'", "'c=fast'", "'d=-1'", "'e=nan'"):
        assert entry in logged


def test_decode_link_rates_bare_string_and_absent():
    assert hints.decode_link_rates("a=1.5") == {"a": 1.5}
    assert hints.decode_link_rates(None) == {}


@given(st.dictionaries(HOST, st.floats(min_value=0, max_value=1e12)))
def test_link_rates_round_trip_any(rates):
    assert hints.decode_link_rates(hints.encode_link_rates(rates)) == rates


@given(st.sets(HOST))
def test_holders_round_trip_any(hosts):
    assert hints.decode_holders(hints.encode_holders(hosts)) == hosts
