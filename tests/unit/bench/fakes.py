"""Synthetic runs and agent status for the bench unit tests."""

from __future__ import annotations

from nova_dcmigrate.bench import counters as ctr
from nova_dcmigrate.bench import methods
from nova_dcmigrate.bench.linkstats import Series
from nova_dcmigrate.lab.qemu import MigrationResult
from nova_dcmigrate.lab.ramcheck import RamComparison


def agent_status(sent=40_000_000, forwarded=1000, relay_bytes=20_000_000,
                 relay_pages=5000, injected=4000, dropped_pages=6000,
                 needed=None):
    """What RedirectableMigration.status() returns after one redirect
    src -> old, then -> new (holder old)."""
    return {
        "src": {"attempts": [
            {"attempt": 0, "role": "source", "state": "failed",
             "counters": {"stream_bytes": 30_000_000}},
            {"attempt": 1, "role": "source", "state": "completed",
             "counters": {"stream_bytes": 70_000_000, "bytes_sent": sent,
                          "pages_dropped": dropped_pages,
                          "bytes_dropped": dropped_pages * 4096,
                          "held_pages_forwarded": forwarded}}]},
        "old": {"attempts": [
            {"attempt": 0, "role": "destination", "state": "failed",
             "counters": {}}]},
        "new": {"attempts": [
            {"attempt": 1, "role": "destination", "state": "completed",
             "counters": {},
             "redirect": {"relay_done": True, "local_pages_injected": 0,
                          "needed": needed or {
                              "nonzero": 15000, "source_only": 8000,
                              "held": 7000, "local": 0},
                          "holders": {"old": {
                              "pages": relay_pages, "bytes": relay_bytes,
                              "injected": injected,
                              "dropped": relay_pages - injected}}}}]},
    }


def result(transferred=100_000_000, total_ms=9000, downtime_ms=250):
    return MigrationResult(
        status="completed", total_time_ms=total_ms, downtime_ms=downtime_ms,
        setup_time_ms=1, transferred_bytes=transferred,
        ram_total_bytes=2**28, normal_pages=1, duplicate_pages=1,
        dirty_sync_count=3, mbps=100.0, cpu_throttle_percent=0,
        wall_time_s=None, raw={})


def ram(identical=True):
    return RamComparison(identical=identical,
                         differing_pages=0 if identical else 3,
                         first_difference=None if identical else 4096,
                         sha256_src="a", sha256_dst="a" if identical else "b",
                         size_bytes=2**28, elapsed_s=1.0)


def agent_run(method="dcmigrate", **status_kw):
    """A dcmigrate run: start at t=100, redirect at 104, done at 114."""
    run = methods.MigrationRun(method=method, started=100.0,
                               completed=114.0)
    run.redirects.append(methods.RedirectEvent(
        at=104.0, fraction=0.5, from_host="old", to_host="new",
        transferred=50_000_000))
    run.attempts = [
        methods.AttemptInfo(0, "old", [], 100.0, 104.0, "redirected",
                            50_000_000),
        methods.AttemptInfo(1, "new", ["old"], 104.1, 114.0, "completed",
                            90_000_000)]
    run.result = result(total_ms=9900)
    status = agent_status(**status_kw)
    run.agent_status = status
    run.counters = [ctr.attempt_counters(status, "src", 1, "new", ["old"])]
    return run


def restart_run(post=16.0):
    run = methods.MigrationRun(method="restart", started=200.0,
                               completed=204.0 + post)
    run.redirects.append(methods.RedirectEvent(
        at=204.0, fraction=0.5, from_host="old", to_host="new",
        transferred=50_000_000))
    run.attempts = [
        methods.AttemptInfo(0, "old", [], 200.0, 204.0, "redirected",
                            50_000_000),
        methods.AttemptInfo(1, "new", [], 204.1, 204.0 + post,
                            "completed", 150_000_000)]
    run.result = result(transferred=150_000_000)
    return run


def series(t0=99.9, hosts=("src", "old", "new"), n=50):
    s = Series(t0=t0)
    for i in range(n):
        s.add(t0 + 0.1 * i, {h: (i * 1_000_000 * (k + 1), i * 500_000)
                             for k, h in enumerate(hosts)})
    return s
