"""Redirect progress from the agents' counters and Nova's migration stats.

The agents' ``get_status`` answers are given as the agents send them (the
shapes of ``AgentManager.get_status``); the driver and run are plain
stand-ins (Nova is not installed in the unit environment).
"""

from __future__ import annotations

import datetime
import types

from nova_dcmigrate.compute import records
from nova_dcmigrate.virt.libvirt import progress
from nova_dcmigrate.virt.libvirt import transport


class _Migration:
    def __init__(self, **fields):
        self.__dict__.update(fields)

    def obj_attr_is_set(self, name):
        return name in self.__dict__


class _Agents:
    def __init__(self, status):
        self.status = status

    def get_status(self, host, migration_id):
        if host not in self.status:
            raise RuntimeError("agent down")
        return self.status[host]


def _driver(tr, migration):
    run = types.SimpleNamespace(migration=migration)
    runs = types.SimpleNamespace(get=lambda uuid: run if uuid == "i" else None)
    return types.SimpleNamespace(dcmigrate_runs=runs,
                                 dcmigrate_transport=tr)


def _agent_transport(status):
    tr = transport.AgentTransport(agents=_Agents(status))
    ep = transport.AgentEndpoint("dest2", "10.0.0.3", 4000)
    mig = transport.AgentMigration("m", "s", "src")
    mig.attempts = [
        transport.AgentAttempt(0, transport.AgentEndpoint("dest1", "a", 1),
                               5000, []),
        transport.AgentAttempt(1, ep, 5001, ["dest1"])]
    tr.migrations["i"] = mig
    return tr


SRC = {"attempts": [
    {"attempt": 0, "counters": {"stream_bytes": 900, "pages": 9}},
    {"attempt": 1, "counters": {"stream_bytes": 800, "bytes_sent": 300,
                                "pages_dropped": 125}}]}
DST = {"attempts": [{"attempt": 1, "redirect": {
    "source_rate": 100.0, "relay_rate": 300.0,
    "holders": {"dest1": {"bytes": 512000, "pages": 125}}}}]}


def test_agents_current_attempt_only():
    mig = _Migration(memory_remaining_bytes=4000)
    before = records.utcnow()
    got = progress.redirect_progress(
        _driver(_agent_transport({"src": SRC, "dest2": DST}), mig), "i")
    assert {k: got[k] for k in ("bytes_from_source", "bytes_relayed",
                                "pages_deduplicated", "remaining_bytes")} \
        == {"bytes_from_source": 300, "bytes_relayed": {"dest1": 512000},
            "pages_deduplicated": 125, "remaining_bytes": 4000}
    eta = records.parse_isotime(got["estimated_completion"])
    # 4000 bytes at 400 bytes/s.
    assert datetime.timedelta(seconds=9) < eta - before < \
        datetime.timedelta(seconds=11)


def test_unreachable_agents_and_unsaved_stats_are_null():
    got = progress.redirect_progress(
        _driver(_agent_transport({}), _Migration()), "i")
    assert got == {"bytes_from_source": None, "bytes_relayed": None,
                   "pages_deduplicated": None, "remaining_bytes": None,
                   "estimated_completion": None}


def test_direct_transport_uses_novas_saved_stats():
    mig = _Migration(memory_processed_bytes=7, memory_remaining_bytes=3)
    got = progress.redirect_progress(
        _driver(transport.DirectLibvirtTransport(), mig), "i")
    assert got == {"bytes_from_source": 7, "bytes_relayed": {},
                   "pages_deduplicated": 0, "remaining_bytes": 3,
                   "estimated_completion": None}


def test_no_run():
    assert progress.redirect_progress(
        _driver(transport.DirectLibvirtTransport(), _Migration()),
        "other") is None
