"""dcmigrate-bench end to end: tiny redirect benchmarks on the lab.

Real parts: the console script's code path (as ``python -m``), the
dcmigrate agents over RabbitMQ, and either libvirt domains on a libvirtd
per lab host (the default, ``--via libvirt``) or bare QEMU guests driven
over QMP (``--via qmp``).  Every run is redirected half way through the
first pass (``direct`` goes straight to the final host); every record must
say the RAM arrived intact, and the PNG must exist.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from nova_dcmigrate.bench import report
from tests.functional.conftest import needs_root

pytestmark = [pytest.mark.lab, needs_root]


def _bench(tmp_path, *args: str, timeout: float) -> dict:
    """Run dcmigrate-bench with ``args``; returns its JSON document."""
    out_json = tmp_path / "bench.json"
    out_png = tmp_path / "bench.png"
    argv = [sys.executable, "-m", "nova_dcmigrate.cmd.bench",
            "--redirect-at", "0.5", "--repeat", "1",
            # A faster source than the demo's keeps these tests short.
            "--link", "src=300mbit", "old=1gbit", "new=1gbit",
            "--json", str(out_json), "--plot", str(out_png), *args]
    env = dict(os.environ, DCMIGRATE_RABBIT_EXTERNAL="1")
    proc = subprocess.run(argv, capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # Plain progress lines (not a terminal) and the final table.
    assert "dcmigrate #1: migrating" in proc.stdout
    assert "RAM identical in every run." in proc.stdout
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads(out_json.read_text())
    assert doc["schema"] == report.SCHEMA and doc["ok"] is True
    for rec in doc["records"]:
        assert report.check_record(rec) == [], rec["method"]
        assert rec["ram_identical"] is True
        assert rec["guest_alive_after_resume"] is True
        assert rec["total_time_s"] > 0
        assert rec["downtime_ms"] is not None and rec["downtime_ms"] > 0
        if rec["method"] != "direct":
            assert rec["redirects"][0]["to"] == "new"
            assert rec["post_redirect_time_s"] > 0
        assert rec["attempts"][-1]["host"] == "new"
    return doc


def _check_dcmigrate(doc: dict) -> None:
    dc = next(r for r in doc["records"] if r["method"] == "dcmigrate")
    assert dc["bytes_relayed"].get("old", 0) > 0
    assert dc["pages_deduplicated"] > 0
    assert 0 < dc["link_utilisation"] <= 1.05
    # The scenario bound: the same for every record, and no run beats it.
    bounds = {r["lower_bound_s"] for r in doc["records"]}
    assert len(bounds) == 1 and None not in bounds
    assert dc["needed_pages"]["nonzero"] > 0
    assert dc["time_over_bound"] >= 0.95
    assert doc["summary"]["methods"]["dcmigrate"]["ratio_to_restart"][
        "post_redirect_time_s"] > 0


@pytest.mark.timeout(300)
@pytest.mark.skipif(shutil.which("libvirtd") is None,
                    reason="libvirtd is not installed")
def test_tiny_benchmark_through_libvirt(tmp_path, rabbit_broker,
                                        guest_image):
    pytest.importorskip("libvirt", reason="libvirt-python is not installed")
    doc = _bench(tmp_path, "--memory", "128", "--dirty-mib", "16",
                 "--methods", "dcmigrate,restart,direct", timeout=280)
    assert doc["config"]["via"] == "libvirt"
    assert doc["environment"]["libvirt"]
    records = {r["method"]: r for r in doc["records"]}
    assert sorted(records) == ["dcmigrate", "direct", "restart"]
    _check_dcmigrate(doc)
    # Restart starts from scratch (no holder); direct never redirects.
    assert records["restart"]["bytes_relayed"] == {}
    assert [a["holders"] for a in records["restart"]["attempts"]] == \
        [[], []]
    assert records["direct"]["redirects"] == []
    assert len(records["direct"]["attempts"]) == 1


@pytest.mark.timeout(240)
def test_tiny_benchmark_over_qmp(tmp_path, rabbit_broker, guest_image):
    doc = _bench(tmp_path, "--via", "qmp", "--memory", "256",
                 "--methods", "dcmigrate,restart", timeout=220)
    assert doc["config"]["via"] == "qmp"
    assert sorted(r["method"] for r in doc["records"]) == ["dcmigrate",
                                                           "restart"]
    _check_dcmigrate(doc)
