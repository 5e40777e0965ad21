#!/usr/bin/env python3
"""Agents' memory in one plain migration and one redirect (libvirt lab).

Why: the before/after comparison of the agents' memory (doc/source/
agent.rst, "Memory") must run the same scenario against any revision, so
this script uses only lab APIs every revision has and reads /proc itself.
Bytes, not timing: the peak RSS growth of each agent process over the
migration (``VmHWM`` after resetting it with ``clear_refs`` = 5), its PSS
and resident shared memory, and what the agents report holding.

Run as root from a checkout (PYTHONPATH selects the revision)::

    PYTHONPATH=. .tox/functional/bin/python tools/agent_memory_scenario.py

Guest: 384 MiB, 300 MiB of it touched at boot (mostly non-zero RAM),
dirtied at 4 MiB/s; links 500 Mbit/s.  Prints one JSON document.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import libvirt

from nova_dcmigrate.lab.agents import LabAgents
from nova_dcmigrate.lab.agents import libvirt_mount_ns
from nova_dcmigrate.lab import image
from nova_dcmigrate.lab import libvirt_host
from nova_dcmigrate.lab import libvirt_migration as lm
from nova_dcmigrate.lab.libvirt_guest import LibvirtGuest
from nova_dcmigrate.lab import rabbit
from nova_dcmigrate.lab.topology import Lab
from nova_dcmigrate.virt.libvirt import controller as ctl

HOSTS = ("src", "a", "b")
MEMORY_MIB, DIRTY_MIB = 384, 300


def _kib(path: str) -> dict[str, int]:
    out = {}
    try:
        with open(path) as f:
            for line in f:
                k, _, v = line.partition(":")
                p = v.split()
                if len(p) == 2 and p[1] == "kB":
                    out[k.strip()] = int(p[0]) * 1024
    except OSError:
        pass
    return out


def _read(pid: int) -> dict[str, int]:
    st = _kib("/proc/%d/status" % pid)
    sm = _kib("/proc/%d/smaps_rollup" % pid)
    return {"rss": st.get("VmRSS", 0), "peak_rss": st.get("VmHWM", 0),
            "rss_shmem": st.get("RssShmem", 0), "pss": sm.get("Pss", 0)}


def _store(agents: LabAgents, host: str, mid: str) -> dict[str, Any]:
    try:
        return dict(agents.api.get_status(host, mid).get("store") or {})
    except Exception as err:  # noqa: BLE001 - reported
        return {"error": str(err).splitlines()[0]}


def scenario(lab: Lab, hosts: dict, agents: LabAgents, img: Any,
             redirect: bool) -> dict[str, Any]:
    guest = LibvirtGuest.start(hosts["src"], img, memory_mib=MEMORY_MIB,
                               dirty_mib=DIRTY_MIB, dirty_rate=4)
    guest.wait_booted(timeout=300)
    time.sleep(1)
    src_ram = guest.open_ram(hosts["src"])
    conn = hosts["src"].open()

    def info(name: str) -> ctl.HostInfo:
        return ctl.HostInfo(name, hosts[name].uri, lab.hosts[name].address,
                            agents.peer_port)

    pids = {h: agents.procs[h].pid for h in HOSTS}
    before = {}
    for h, pid in pids.items():
        with open("/proc/%d/clear_refs" % pid, "w") as f:
            f.write("5")
        before[h] = _read(pid)
    m = ctl.RedirectableMigration(
        conn.lookupByUUIDString(guest.uuid), info("src"), agents.api, info,
        extra_flags=libvirt.VIR_MIGRATE_PAUSED)
    try:
        m.start("a")
        held_after_redirect = None
        if redirect:
            deadline = time.monotonic() + 120
            while (m.status().job.get("memory_processed") or 0) < 120e6:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            m.redirect("b")
            held_after_redirect = _store(agents, "a", m.migration_id)
        attempt = m.wait(600)
        dst = hosts[attempt.host.name]
        cmp = lm.compare_moved_ram(guest, hosts["src"], src_ram, dst)
        out: dict[str, Any] = {
            "redirect": redirect, "ram_identical": cmp.identical,
            "destination": attempt.host.name, "agents": {}}
        for h, pid in pids.items():
            after = _read(pid)
            out["agents"][h] = {
                "peak_rss_growth": after["peak_rss"] - before[h]["rss"],
                "rss_before": before[h]["rss"], "after": after,
                "store_at_end": _store(agents, h, m.migration_id)}
        if held_after_redirect is not None:
            out["old_destination_store_after_redirect"] = \
                held_after_redirect
        return out
    finally:
        os.close(src_ram)
        m.cleanup()
        guest.destroy()
        conn.close()


def main() -> int:
    broker = rabbit.broker_from_env()
    img = image.build_guest_image()
    results = []
    try:
        with Lab({h: "500mbit" for h in HOSTS}) as lab:
            hosts = libvirt_host.start_libvirt_hosts(lab)
            try:
                with LabAgents(lab, mount_ns=libvirt_mount_ns(hosts)) \
                        as agents:
                    for redirect in (False, True):
                        results.append(scenario(lab, hosts, agents, img,
                                                redirect))
            finally:
                for host in hosts.values():
                    host.stop()
    finally:
        broker.stop()
    json.dump({"guest_mib": MEMORY_MIB, "dirty_mib": DIRTY_MIB,
               "runs": results}, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
