"""Redirecting running migrations of real QEMU guests (issue: redirect).

Real parts: QEMU 10 guests in network namespaces, dcmigrate-agent daemons
talking oslo.messaging over RabbitMQ, shaped links.  Each completed
migration compares RAM byte for byte before the destination resumes and
checks the guest keeps running there.
"""

from __future__ import annotations

import time

import pytest

from nova_dcmigrate.lab.agents import LabAgents
from nova_dcmigrate.lab.qemu import QemuGuest
from nova_dcmigrate.lab.ramcheck import compare_ram
from nova_dcmigrate.lab.redirect import RedirectableMigration
from nova_dcmigrate.lab.redirect import RedirectRefused
from nova_dcmigrate.lab.topology import Lab
from tests.functional.conftest import needs_root

pytestmark = [pytest.mark.lab, needs_root]

MEM = 256


@pytest.fixture(scope="module")
def lab(rabbit_broker):
    with Lab({"src": "300mbit", "a": "300mbit", "b": "300mbit"}) as lab:
        yield lab


@pytest.fixture(scope="module")
def agents(lab):
    with LabAgents(lab) as agents:
        yield agents


@pytest.fixture
def guest(lab, guest_image):
    for h in ("src", "a", "b"):
        lab.set_rate(h, "300mbit")
    g = QemuGuest.start(lab, "src", guest_image, memory_mib=MEM,
                        dirty_mib=32, dirty_rate=8)
    g.wait_booted()
    time.sleep(1)
    yield g
    g.stop()


# Bytes of this guest's first pass (kernel, initramfs, dirtied region and
# zero records), measured: about 120 MB.
FIRST_PASS_BYTES = 120e6


def _wait_progress(m: RedirectableMigration, fraction: float) -> None:
    """Wait until the current attempt did ``fraction`` of a first pass."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        info = m.src.query_migrate()
        assert info.get("status") in ("setup", "active"), info
        if info.get("ram", {}).get("transferred", 0) >= \
                fraction * FIRST_PASS_BYTES:
            return
        time.sleep(0.05)
    raise AssertionError("migration made no progress")


def _finish(m: RedirectableMigration) -> dict:
    m.wait(300)
    dst = m.current.dst_guest
    cmp = compare_ram(m.src, dst)
    assert cmp.identical, "RAM differs in %d pages" % cmp.differing_pages
    lines = dst.alive_count()
    dst.cont()
    dst.wait_alive(lines, timeout=30)
    status = m.status()
    m.cleanup()
    return status


def _attempt(status: dict, host: str, number: int) -> dict:
    return [a for a in status[host]["attempts"]
            if a["attempt"] == number][0]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("progress", [0.3, 0.7])
def test_single_redirect(lab, agents, guest, progress):
    m = RedirectableMigration(lab, agents, guest)
    m.start("a")
    _wait_progress(m, progress)
    m.redirect("b")
    st = _finish(m)
    src1 = _attempt(st, "src", 1)
    b1 = _attempt(st, "b", 1)
    assert src1["state"] == b1["state"] == "completed"
    # Pages A already had did not cross the source's link again ...
    assert src1["counters"]["pages_dropped"] > 0
    # ... A relayed them, and the counters say how much.
    red = b1["redirect"]
    assert red["relay_done"]
    assert red["holders"]["a"]["injected"] > 0
    assert red["holders"]["a"]["bytes"] > 0


@pytest.mark.timeout(400)
def test_two_redirects_then_back_to_first_destination(lab, agents, guest):
    m = RedirectableMigration(lab, agents, guest)
    m.start("a")
    _wait_progress(m, 0.3)
    m.redirect("b")
    time.sleep(1.0)
    m.redirect("a")             # back to a host that holds pages
    st = _finish(m)
    a2 = _attempt(st, "a", 2)
    assert a2["state"] == "completed"
    red = a2["redirect"]
    # A reused what it still held from attempt 0, B relayed the rest.
    assert red["local_pages_injected"] > 0
    assert "b" in red["holders"]
    assert _attempt(st, "src", 2)["counters"]["pages_dropped"] > 0


@pytest.mark.timeout(400)
def test_relay_host_dies_mid_relay(lab, agents, guest):
    lab.set_rate("a", "40mbit")       # a slow relay, to kill it mid-way
    m = RedirectableMigration(lab, agents, guest)
    m.start("a")
    _wait_progress(m, 0.3)
    m.redirect("b")
    time.sleep(1.0)
    agents.kill("a")
    try:
        st = _finish(m)
    finally:
        agents.start_agent("a")
        agents.wait_ready("a")
    assert "a" in m.dead_holders
    last = m.current
    assert last.dst_host == "b" and last.holders == []
    assert _attempt(st, "b", last.number)["state"] == "completed"


@pytest.mark.timeout(300)
def test_redirect_refused_when_unsafe(lab, agents, guest):
    m = RedirectableMigration(lab, agents, guest)
    with pytest.raises(RedirectRefused, match="the new host is the source"):
        m.start("a")
        m.redirect("src")
    m.wait(300)
    # Completed: the destination can no longer change.
    with pytest.raises(RedirectRefused, match="completed"):
        m.redirect("b")
    m.current.dst_guest.stop()
    m.cleanup()


@pytest.mark.timeout(300)
def test_redirect_refused_with_postcopy(lab, agents, guest):
    guest.set_migration_caps(**{"postcopy-ram": True})
    m = RedirectableMigration(lab, agents, guest)
    # The agents reject a postcopy stream outright (POSTCOPY_ADVISE) ...
    m.start("a")
    with pytest.raises(Exception):
        m.wait(60)
    assert guest.status() == "running"     # the VM stayed on the source
    # ... and a redirect is refused before anything is cancelled.
    with pytest.raises(RedirectRefused):
        m.redirect("b")
    m.current.dst_guest.stop()
    m.cleanup()


@pytest.mark.timeout(400)
def test_destination_link_cut_then_resume(lab, agents, guest):
    lab.set_rate("a", "100mbit")
    m = RedirectableMigration(lab, agents, guest)
    m.start("a")
    _wait_progress(m, 0.4)
    lab.set_link("a", False)             # the destination drops off
    time.sleep(2.0)
    sent = guest.query_migrate()["ram"]["transferred"]
    time.sleep(1.0)
    # Stalled: the source cannot push more than its socket buffers.
    assert guest.query_migrate()["ram"]["transferred"] - sent < 4e6
    lab.set_link("a", True)
    m.resume()                           # same host: reuse what it holds
    st = _finish(m)
    a1 = _attempt(st, "a", 1)
    assert a1["state"] == "completed"
    assert a1["redirect"]["local_pages_injected"] > 0
    assert _attempt(st, "src", 1)["counters"]["pages_dropped"] > 0
