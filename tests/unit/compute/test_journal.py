"""Persisted redirect records: atomic, bounded, and safe to read back."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from nova_dcmigrate.compute import exception
from nova_dcmigrate.compute import journal
from nova_dcmigrate.compute import run as run_state

UUID = "8c7a5c5e-2f7a-4c5c-9d7e-0c1f2a3b4c5d"


def _record(**kw: Any) -> journal.RunRecord:
    fields: dict[str, Any] = dict(
        instance=UUID, migration="m-1", source="src",
        destinations=["dest1", "dest2"], target="dest3",
        migrate_data={"nova_object.name": "LibvirtLiveMigrateData"},
        attachments={"dest1": ["a-1"]})
    fields.update(kw)
    return journal.RunRecord(**fields)


def _journal(tmp_path: Path, max_bytes: int = 65536) -> journal.RunJournal:
    return journal.RunJournal(str(tmp_path / "runs"), max_bytes)


def test_round_trip_and_remove(tmp_path: Path) -> None:
    j = _journal(tmp_path)
    assert j.instances() == []
    j.write(_record())
    assert j.instances() == [UUID]
    got = j.load(UUID)
    assert got == _record()
    assert got is not None
    assert got.hosts() == ["dest1", "dest2", "dest3"]
    assert oct(os.stat(j.directory).st_mode & 0o777) == "0o700"
    j.remove(UUID)
    j.remove(UUID)  # no error when already gone
    assert j.instances() == [] and j.load(UUID) is None


def test_write_is_atomic(tmp_path: Path) -> None:
    # A write that fails half-way leaves the previous record intact and
    # no temporary file behind.
    j = _journal(tmp_path)
    j.write(_record(target=None))
    with mock.patch("os.replace", side_effect=OSError("disk full")):
        with pytest.raises(exception.RunRecordError) as err:
            j.write(_record(target="dest3"))
    assert "disk full" in str(err.value)
    assert err.value.kwargs["instance"] == UUID
    got = j.load(UUID)
    assert got is not None and got.target is None
    assert os.listdir(j.directory) == [UUID + ".json"]


def test_too_large_is_refused(tmp_path: Path) -> None:
    j = _journal(tmp_path, max_bytes=4096)
    with pytest.raises(exception.RunRecordError) as err:
        j.write(_record(attachments={"dest1": ["x" * 40] * 200}))
    assert "run_record_max_bytes" in str(err.value)
    assert j.load(UUID) is None


@pytest.mark.parametrize("content", [
    b"{not json", b"[]", json.dumps({"version": 99}).encode(),
    json.dumps({"version": 1, "instance": UUID, "migration": "m",
                "source": "s", "destinations": ["d"], "bogus": 1}).encode(),
    json.dumps({"version": 1, "instance": "other", "migration": "m",
                "source": "s", "destinations": ["d"]}).encode(),
    b"\xff\xfe",
])
def test_corrupt_record_is_moved_aside(tmp_path: Path, content: bytes,
                                       caplog: Any) -> None:
    j = _journal(tmp_path)
    os.makedirs(j.directory)
    Path(j.path(UUID)).write_bytes(content)
    with caplog.at_level(logging.ERROR):
        assert j.load(UUID) is None
    assert os.path.exists(j.path(UUID) + journal.CORRUPT_SUFFIX)
    assert j.instances() == []
    assert "check by hand" in caplog.text and UUID in caplog.text


def test_oversized_file_is_not_read(tmp_path: Path) -> None:
    j = _journal(tmp_path, max_bytes=4096)
    os.makedirs(j.directory)
    Path(j.path(UUID)).write_text(_record(
        attachments={"d": ["y" * 50] * 200}).to_json())
    assert j.load(UUID) is None
    assert os.path.exists(j.path(UUID) + journal.CORRUPT_SUFFIX)


def test_missing_directory(tmp_path: Path) -> None:
    j = _journal(tmp_path)
    assert j.instances() == [] and j.load(UUID) is None


@pytest.mark.parametrize("bad", ["", "../x", ".hidden", "a/b"])
def test_bad_names_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError):
        _journal(tmp_path).path(bad)


class _Obj:
    def __init__(self, **data: Any) -> None:
        self.data = data

    def obj_to_primitive(self) -> dict[str, Any]:
        return {"nova_object.data": dict(self.data)}


def test_run_persists_from_the_first_redirect_until_it_ends(
        tmp_path: Path) -> None:
    j = _journal(tmp_path)
    registry = run_state.Registry(5)
    registry.journal = j
    migration = mock.Mock(uuid="m-1")
    run = run_state.LiveMigrationRun(
        UUID, migration, "src", "dest1", _Obj(port=1),
        [_Obj(attachment_id="src-a")])
    registry.add(run)
    # Without a redirect nothing is written (the stock driver's path).
    run.record_error(RuntimeError("x"))
    assert j.instances() == []
    run.request("dest2")
    run.take_request()
    run.persist()
    run.note_target("dest2")
    run.note_attachments("dest1", ["d1-a"])
    got = j.load(UUID)
    assert got is not None
    assert (got.destinations, got.target, got.attachments,
            got.source_bdms) == (["dest1"], "dest2", {"dest1": ["d1-a"]},
                                 [{"nova_object.data":
                                   {"attachment_id": "src-a"}}])
    run.prepared()
    run.redirected("dest2", _Obj(port=2))
    got = j.load(UUID)
    assert got is not None and got.destinations == ["dest1", "dest2"]
    assert got.migrate_data == {"nova_object.data": {"port": 2}}
    run.take_switch()
    run.completing()
    registry.finish(run, run_state.COMPLETED)
    assert j.instances() == []


def test_ended_run_with_pending_cleanup_keeps_its_record(
        tmp_path: Path) -> None:
    j = _journal(tmp_path)
    registry = run_state.Registry(5)
    registry.journal = j
    run = run_state.LiveMigrationRun(UUID, mock.Mock(uuid="m-1"), "src",
                                     "dest1", None, [])
    registry.add(run)
    run.persist()
    run.cleanup_pending.append(mock.Mock(host="dest1", state="pending"))
    registry.finish(run, run_state.ROLLED_BACK)
    got = j.load(UUID)
    assert got is not None and got.cleanup_hosts == ["dest1"]


def test_unwritable_record_does_not_stop_the_run(tmp_path: Path,
                                                 caplog: Any) -> None:
    j = _journal(tmp_path, max_bytes=4096)
    run = run_state.LiveMigrationRun(UUID, mock.Mock(uuid="m-1"), "src",
                                     "dest1", None, [])
    run.journal = j
    with caplog.at_level(logging.ERROR):
        run.note_attachments("dest1", ["z%03d" % i * 20 for i in range(100)])
    assert "not persisted" in caplog.text
    assert j.load(UUID) is None
