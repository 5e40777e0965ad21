"""The per-agent memory probe of the benchmark, on real processes."""

from __future__ import annotations

import subprocess
import sys

from nova_dcmigrate.bench.agent_memory import AgentMemoryProbe


class _Api:
    def list_migrations(self, host):
        return ["m1"]

    def get_status(self, host, mid):
        return {"store": {"backing_bytes": 7 << 20, "copied_bytes": 4096}}


class _Agents:
    def __init__(self, procs):
        self.procs = procs
        self.api = _Api()


def test_peak_growth_and_held_memory_per_agent():
    # A stand-in agent process that allocates 64 MiB, then frees it: the
    # peak must show it although the RSS at the end does not.
    code = ("import sys,time\nsys.stdin.readline()\n"
            "b = bytearray(64 << 20)\nb[::4096] = b'x' * (16384)\n"
            "del b\nprint('ok', flush=True)\ntime.sleep(30)\n")
    proc = subprocess.Popen([sys.executable, "-c", code],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        probe = AgentMemoryProbe(_Agents({"a": proc}))
        probe.start()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "ok"
        rec = probe.finish()["a"]
        assert rec["peak_rss_growth"] >= 60 << 20
        assert rec["rss_after"] < rec["peak_rss"]
        assert rec["held_backing_bytes"] == 7 << 20
        assert rec["copied_bytes"] == 4096
    finally:
        proc.kill()
        proc.wait()
