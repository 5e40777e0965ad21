"""Live migrations between real libvirtd hosts in the lab.

Three lab hosts, each running its own libvirtd (monolithic, TCP, private
mount + UTS namespace; :mod:`nova_dcmigrate.lab.libvirt_host`), and a TCG
guest (Linux + memory dirtier) defined as a libvirt domain.  Migrations are
libvirt peer-to-peer live migrations (``migrateToURI3``, LIVE | PEER2PEER
| PERSIST_DEST | UNDEFINE_SOURCE, plus PAUSED for the RAM check), either
direct or through real dcmigrate-agent daemons controlled over RabbitMQ.
Every successful migration compares the source's final RAM block with the
paused destination's byte for byte before the destination resumes (see
:mod:`nova_dcmigrate.lab.libvirt_migration`), then checks that the guest
runs on.

Needs root, libvirtd/virtlogd (libvirt >= 11 with QEMU >= 10, see
tools/install-system-deps.sh), libvirt-python and RabbitMQ.  About a
minute.
"""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from tests.functional.libvirt.conftest import LIBVIRT_LAB

pytestmark = LIBVIRT_LAB

libvirt = pytest.importorskip(
    "libvirt", reason="libvirt-python is not installed (pip install "
                      "libvirt-python -c constraints.txt)")

from nova_dcmigrate.lab import exception as lab_exc  # noqa: E402
from nova_dcmigrate.lab.libvirt_guest import LibvirtGuest  # noqa: E402
from nova_dcmigrate.lab import libvirt_migration as lm  # noqa: E402

#: The module's lab (fixtures ``lab``, ``hosts``, ``agents`` in conftest).
LAB_HOSTS = ("h1", "h2", "h3")
LAB_LINK = "1gbit"


@pytest.fixture
def unshaped(lab):
    yield
    for name in LAB_HOSTS:
        lab.set_rate(name, LAB_LINK)


def _domains(host) -> list[str]:
    return sorted(d.name() for d in host.conn.listAllDomains())


def _ram_sha(guest: LibvirtGuest) -> str:
    fd = guest.open_ram()
    try:
        digest = hashlib.sha256()
        offset = 0
        while chunk := os.pread(fd, 4 << 20, offset):
            digest.update(chunk)
            offset += len(chunk)
        return digest.hexdigest()
    finally:
        os.close(fd)


def _assert_stats(m: lm.LibvirtMigration) -> None:
    assert m.samples, "no job statistics were sampled during the job"
    assert m.stats["type"] == libvirt.VIR_DOMAIN_JOB_COMPLETED
    assert m.time_elapsed_ms and m.time_elapsed_ms > 0
    assert m.downtime_ms is not None and 0 < m.downtime_ms < 10_000
    assert m.data_total and m.data_total >= m.guest.memory_bytes
    assert m.memory_processed and m.memory_processed > 0


def _assert_only_on(guest: LibvirtGuest, hosts, name: str) -> None:
    for host_name, host in hosts.items():
        expected = [guest.name] if host_name == name else []
        assert _domains(host) == expected, (host_name, _domains(host))
    dom = guest.domain(hosts[name])
    assert dom.isPersistent()
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING


@pytest.mark.timeout(120)
def test_direct_libvirt_migration(lab, hosts, guest_image):
    guest = LibvirtGuest.start(hosts["h1"], guest_image, memory_mib=256)
    guest.wait_booted()
    m = lm.migrate_direct(guest, hosts["h2"])
    assert m.ram is not None and m.ram.identical, (
        f"RAM differs in {m.ram.differing_pages} pages (first at "
        f"{m.ram.first_difference:#x})")
    assert m.resume_to_alive_s is not None
    _assert_stats(m)
    _assert_only_on(guest, hosts, "h2")
    # The RAM block read is the live guest RAM (not a stale copy): it
    # changes while the resumed guest runs.
    before = _ram_sha(guest)
    guest.wait_alive(guest.alive_count(), timeout=30)
    assert _ram_sha(guest) != before
    guest.destroy()


@pytest.mark.timeout(150)
def test_libvirt_migration_through_agents(lab, hosts, agents, guest_image):
    guest = LibvirtGuest.start(hosts["h1"], guest_image, memory_mib=256)
    guest.wait_booted()
    m = lm.migrate_via_agents(lab, agents, guest, hosts["h3"])
    assert m.ram is not None and m.ram.identical, (
        f"RAM differs in {m.ram.differing_pages} pages")
    assert m.resume_to_alive_s is not None
    _assert_stats(m)
    _assert_only_on(guest, hosts, "h3")
    (s,) = m.src_status["attempts"]
    (d,) = m.dst_status["attempts"]
    assert s["state"] == d["state"] == "completed", (s, d)
    # Every byte libvirt's source QEMU sent crossed both agents, and the
    # return path was relayed too.
    assert s["counters"]["stream_bytes"] == d["counters"]["stream_bytes"]
    assert s["counters"]["stream_bytes"] >= m.memory_processed > 0
    assert s["counters"]["return_bytes"] == \
        d["counters"]["return_bytes"] > 0
    assert d["counters"]["acked_offset"] == d["counters"]["stream_bytes"]
    # The destination agent held the QEMU's shared RAM (no page copies)
    # and let go of it at completion (the guest runs on it): what its
    # store keeps is zero pages and copies of QEMU's small ROM blocks.
    assert d["counters"]["ram_backing"] == 1, d
    store = m.dst_status["store"]
    assert store["backing_bytes"] == 0, store
    assert store["copied_bytes"] < 4 << 20, store
    assert 0 < store["bytes_held"] < m.stats["memory_total"], store
    guest.destroy()


@pytest.mark.timeout(180)
def test_destination_agent_killed_mid_migration(lab, hosts, agents,
                                                guest_image, unshaped):
    src, dst = hosts["h2"], hosts["h3"]
    guest = LibvirtGuest.start(src, guest_image, memory_mib=256,
                               dirty_mib=16, dirty_rate=5)
    guest.wait_booted()
    # ~90 MB at 100 Mbit/s: several seconds, time to kill mid-stream.
    lab.set_rate("h2", "100mbit")
    lab.set_rate("h3", "100mbit")
    m = lm.start_via_agents(lab, agents, guest, dst)
    src_dom = guest.domain(src)
    deadline = time.monotonic() + 30
    while True:
        stats = src_dom.jobStats()
        if stats.get("memory_processed", 0) > 8 << 20:
            break
        assert m.running, f"migration ended early: {m.error}"
        assert time.monotonic() < deadline, stats
        time.sleep(0.05)
    agents.kill("h3")
    with pytest.raises(lab_exc.MigrationFailed):
        lm.wait_migration(m, timeout=60)
    lm.collect_agent_status(m)
    # Never both, never neither: the guest runs on the source only, still
    # persistent there; the destination QEMU and domain are gone.
    assert guest.host is src
    assert guest.state(src)[0] == libvirt.VIR_DOMAIN_RUNNING
    assert guest.domain(src).isPersistent()
    deadline = time.monotonic() + 20
    while _domains(dst) or dst.qemu_pid(guest.name) is not None:
        assert time.monotonic() < deadline, _domains(dst)
        time.sleep(0.2)
    guest.wait_alive(guest.alive_count(), timeout=30)
    (s,) = m.src_status["attempts"]
    assert s["state"] == "failed" and "lost" in s["error"], s
    # The guest is migratable again once the agent is back.
    agents.start_agent("h3")
    agents.wait_ready("h3")
    lab.set_rate("h2", "1gbit")
    lab.set_rate("h3", "1gbit")
    m2 = lm.migrate_via_agents(lab, agents, guest, dst)
    assert m2.ram is not None and m2.ram.identical
    (s2,) = m2.src_status["attempts"]
    assert s2["state"] == "completed", (m2.src_status, m2.dst_status)
    _assert_only_on(guest, hosts, "h3")
    guest.destroy()
