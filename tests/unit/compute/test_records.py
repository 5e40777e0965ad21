"""Redirect records: the guarded state machine, JSON form, bounded
history (no Nova needed)."""

from __future__ import annotations

import pytest

from nova_dcmigrate.compute import records
from nova_dcmigrate.compute.records import RedirectState as S


def _record(**kw):
    args = dict(server_id="srv", migration_id="mig", source="src",
                old_destination="dest1", requested_by="user:u1")
    args.update(kw)
    return records.RedirectRecord(**args)


ALL = list(S)
ALLOWED = {
    (S.REQUESTED, S.PREPARING), (S.REQUESTED, S.FAILED),
    (S.REQUESTED, S.ROLLED_BACK), (S.PREPARING, S.RUNNING),
    (S.PREPARING, S.FAILED), (S.PREPARING, S.ROLLED_BACK),
    (S.RUNNING, S.COMPLETED), (S.RUNNING, S.FAILED),
    (S.RUNNING, S.ROLLED_BACK),
}


def _reach(state):
    rec = _record()
    path = {S.REQUESTED: [], S.PREPARING: [S.PREPARING],
            S.RUNNING: [S.PREPARING, S.RUNNING],
            S.COMPLETED: [S.PREPARING, S.RUNNING, S.COMPLETED],
            S.FAILED: [S.FAILED], S.ROLLED_BACK: [S.ROLLED_BACK]}[state]
    for step in path:
        rec.transition(step)
    return rec


@pytest.mark.parametrize("old", ALL)
@pytest.mark.parametrize("new", ALL)
def test_transition_table_is_the_guard(old, new):
    rec = _reach(old)
    before = rec.to_dict()
    if (old, new) in ALLOWED:
        rec.transition(new)
        assert rec.state is new
        assert (rec.finished_at is not None) == (new in records.FINAL_STATES)
    else:
        err = pytest.raises(records.InvalidRedirectTransition,
                            rec.transition, new).value
        assert err.kwargs == {"redirect": rec.id, "state": old.value,
                              "new_state": new.value}
        assert rec.to_dict() == before


def test_json_form_matches_the_contract_and_round_trips():
    rec = _record(new_destination=None, reason="maintenance",
                  evidence={"rate": 1})
    rec.transition(S.PREPARING)
    rec.transition(S.FAILED, error=ValueError("no host"))
    d = rec.to_dict()
    assert set(d) == {
        "id", "server_id", "migration_id", "state", "source",
        "old_destination", "new_destination", "requested_by", "reason",
        "evidence", "created_at", "updated_at", "finished_at", "progress",
        "error", "request_id"}
    assert d["state"] == "failed"
    assert d["error"] == {"code": "ValueError", "message": "no host"}
    assert d["progress"] is None
    assert d["created_at"].endswith("Z")
    assert records.RedirectRecord.from_dict(d).to_dict() == d


def test_progress_keeps_every_key_and_nulls_unknown_ones():
    rec = _record()
    rec.set_progress({"bytes_from_source": 10, "extra": 1})
    assert rec.progress == {"bytes_from_source": 10, "bytes_relayed": None,
                            "pages_deduplicated": None,
                            "remaining_bytes": None,
                            "estimated_completion": None}
    rec.set_progress(None)
    assert rec.progress["bytes_from_source"] == 10


def test_history_is_bounded_and_newest_first():
    history = records.RedirectHistory(per_instance=2, instances=2)
    a1, a2, a3 = (_record(server_id="a", migration_id=m)
                  for m in ("m1", "m2", "m2"))
    for rec in (a1, a2, a3):
        history.add(rec)
    assert history.list("a") == [a3, a2]
    assert history.list("a", "m1") == []
    b = _record(server_id="b")
    c = _record(server_id="c")
    history.add(b)
    history.add(c)
    # "a" was touched longest ago.
    assert history.list("a") == []
    assert history.list("b") == [b]
    assert history.list("c") == [c]


def test_requesters():
    assert records.user_requester("u1") == "user:u1"
    assert records.user_requester(None) == "user:unknown"
    assert records.trigger_requester("slow-link") == "trigger:slow-link"
