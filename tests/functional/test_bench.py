"""dcmigrate-bench end to end: a tiny redirect benchmark on the lab.

Real parts: the console script's code path (as ``python -m``), QEMU
guests in network namespaces, the dcmigrate agents over RabbitMQ.  One
DCmigrate run and one abort-and-restart run, each redirected half way
through the first pass; every record must say the RAM arrived intact,
and the PNG must exist.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from nova_dcmigrate.bench import report
from tests.functional.conftest import needs_root

pytestmark = [pytest.mark.lab, needs_root]


@pytest.mark.timeout(240)
def test_tiny_benchmark_writes_json_and_png(tmp_path, rabbit_broker,
                                            guest_image):
    out_json = tmp_path / "bench.json"
    out_png = tmp_path / "bench.png"
    argv = [sys.executable, "-m", "nova_dcmigrate.cmd.bench",
            "--memory", "256", "--methods", "dcmigrate,restart",
            "--redirect-at", "0.5", "--repeat", "1",
            # A faster source than the demo's keeps this test short.
            "--link", "src=300mbit", "old=1gbit", "new=1gbit",
            "--json", str(out_json), "--plot", str(out_png)]
    env = dict(os.environ, DCMIGRATE_RABBIT_EXTERNAL="1")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=220,
                          env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # Plain progress lines (not a terminal) and the final table.
    assert "dcmigrate #1: migrating" in proc.stdout
    assert "RAM identical in every run." in proc.stdout

    doc = json.loads(out_json.read_text())
    assert doc["schema"] == report.SCHEMA and doc["ok"] is True
    records = doc["records"]
    assert sorted(r["method"] for r in records) == ["dcmigrate", "restart"]
    for rec in records:
        assert report.check_record(rec) == [], rec["method"]
        assert rec["ram_identical"] is True
        assert rec["guest_alive_after_resume"] is True
        assert rec["redirects"][0]["to"] == "new"
        assert rec["post_redirect_time_s"] > 0
    dc = next(r for r in records if r["method"] == "dcmigrate")
    assert dc["bytes_relayed"].get("old", 0) > 0
    assert dc["pages_deduplicated"] > 0
    assert 0 < dc["efficiency"] <= 1.05
    assert doc["summary"]["methods"]["dcmigrate"]["ratio_to_restart"][
        "post_redirect_time_s"] > 0
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
