"""Agent memory with real libvirtd/QEMU: one copy of guest RAM.

The lab guests are booted with a memfd memory backing (as Nova's driver
does with ``[dcmigrate_compute] memory_backing = memfd``), so a
destination agent holds its QEMU's RAM instead of copying the pages it
forwards.  Checked here, with RAM compared byte for byte after each
migration:

* a plain migration of a guest whose RAM is mostly non-zero grows the
  destination agent's peak RSS by less than 2% of guest RAM (a memory
  check, not a timing one);
* after a redirect the old destination holds what its QEMU had reserved
  until the migration is cleaned up, and nothing after;
* an agent whose controller vanished releases the held RAM after
  ``store_expiry``.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.functional.libvirt.conftest import LabRun
from tests.functional.libvirt.conftest import LIBVIRT_LAB

pytestmark = LIBVIRT_LAB

libvirt = pytest.importorskip("libvirt",
                              reason="libvirt-python is not installed")

from nova_dcmigrate.agent import exception as agent_exc  # noqa: E402
from nova_dcmigrate.lab.libvirt_guest import MEMFD_NAME  # noqa: E402
from nova_dcmigrate.lab import proc_memory  # noqa: E402

LAB_HOSTS = ("src", "a", "b")
LAB_LINK = "500mbit"
MEMORY_MIB = 384
DIRTY_MIB = 300          # touched at boot: most of the RAM is non-zero
GUEST_BYTES = MEMORY_MIB << 20
#: Seconds an unused store is kept in this module's agents.
EXPIRY_S = 20
#: The goal: a migration costs a destination agent at most this.
BUDGET = 0.02 * GUEST_BYTES
#: A redirect's new destination: the goal is BUDGET too; measured
#: 1.8-2.1% (doc/source/agent.rst), so this leaves room for the spread.
NEW_DEST_BUDGET = 0.025 * GUEST_BYTES
#: The agents' extra [dcmigrate_agent] lines (conftest's ``agents``).
AGENT_CONF = "store_expiry = %d\n" % EXPIRY_S


def _memfds_held(pid: int) -> int:
    n = 0
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            if os.readlink("/proc/%d/fd/%s" % (pid, fd)).startswith(
                    "/memfd:" + MEMFD_NAME):
                n += 1
        except OSError:
            pass
    return n


class Run(LabRun):
    """The module's guest (mostly non-zero RAM), agents' peak RSS reset."""

    WAIT_S = 400
    ALIVE_S = 60

    def __init__(self, lab, hosts, agents, image) -> None:
        super().__init__(lab, hosts, agents, image, memory_mib=MEMORY_MIB,
                         dirty_mib=DIRTY_MIB, dirty_rate=4,
                         boot_timeout=180)
        self.before = {}
        for name in LAB_HOSTS:
            pid = self.pid(name)
            proc_memory.reset_peak(pid)
            self.before[name] = proc_memory.read(pid)

    def pid(self, name: str) -> int:
        return self.agents.procs[name].pid

    def store(self, name: str) -> dict:
        return self.agents.api.get_status(name, self.m.migration_id)["store"]

    def growth(self, name: str) -> tuple[int, proc_memory.ProcMemory]:
        after = proc_memory.read(self.pid(name))
        growth = after.peak_rss - self.before[name].rss
        print("agent %s: peak RSS growth %.1f MiB; %s"
              % (name, growth / 2**20, after))
        return growth, after


LAB_RUN = Run


@pytest.mark.timeout(400)
def test_plain_migration_costs_the_destination_agent_under_2pct(run):
    r = run()
    r.m.start("a")
    assert r.finish_and_check() == "a"
    st = r.agents.api.get_status("a", r.m.migration_id)
    att = st["attempts"][0]
    assert att["counters"]["ram_backing"] == 1, att
    # Most of the RAM was non-zero pages, none of them copied (only
    # QEMU's small ROM blocks are), and the completed migration's RAM is
    # no longer held (the guest runs on it).
    assert att["counters"]["pages"] * 4096 > 0.7 * GUEST_BYTES
    assert st["store"]["copied_bytes"] < 4 << 20, st["store"]
    assert st["store"]["backing_bytes"] == 0
    assert _memfds_held(r.pid("a")) == 0
    growth, after = r.growth("a")
    assert growth < BUDGET, (
        "destination agent peak RSS grew by %.1f MiB (budget %.1f MiB): %s"
        % (growth / 2**20, BUDGET / 2**20, after))
    src_growth, _ = r.growth("src")
    assert src_growth < BUDGET, src_growth


@pytest.mark.timeout(500)
def test_redirect_old_destination_holds_qemu_ram_until_cleanup(run, hosts):
    r = run()
    r.m.start("a")
    r.wait_progress(120e6)
    r.m.redirect("b")
    assert hosts["a"].qemu_pid(r.guest.name) is None
    # A's QEMU is gone; A's agent holds its RAM (no copy).
    held = r.store("a")
    assert held["backing_bytes"] > 100e6, held
    assert held["backing_bytes"] <= GUEST_BYTES, held
    assert held["copied_bytes"] < 4 << 20, held
    assert _memfds_held(r.pid("a")) == 1
    assert r.finish_and_check() == "b"
    st = r.m.status()
    assert st.bytes_relayed.get("a", 0) > 30e6, st.bytes_relayed
    # Redirect state (inventories, the plan) is compact: the old
    # destination within the 2% a plain migration may cost, the new one
    # at about 2% (measured 7.0-8.2 MiB of a 384 MiB guest: 1.8-2.1%;
    # they used to keep a copy of guest RAM, ~80% here, then 4.8%).
    growths = {name: r.growth(name) for name in ("a", "b")}
    for name, (growth, after) in growths.items():
        assert growth < (BUDGET if name == "a" else NEW_DEST_BUDGET), \
            (name, growth / 2**20, after)
    r.m.cleanup()
    assert _memfds_held(r.pid("a")) == 0
    with pytest.raises(agent_exc.UnknownMigration):
        r.agents.api.get_status("a", r.m.migration_id)


@pytest.mark.timeout(400)
def test_vanished_controller_held_ram_released_after_expiry(run, hosts):
    r = run()
    r.m.start("a")
    r.wait_progress(100e6)
    # The controller dies: the job is cancelled (libvirt kills A's QEMU)
    # but nobody tells the agents to abort or clean up.
    r.m.dom.abortJob()
    r.m.current.thread.join(60)
    assert hosts["a"].qemu_pid(r.guest.name) is None
    assert _memfds_held(r.pid("a")) == 1
    assert r.store("a")["backing_bytes"] > 50e6
    deadline = time.monotonic() + EXPIRY_S + 45
    while _memfds_held(r.pid("a")):
        assert time.monotonic() < deadline, "held RAM not released"
        time.sleep(1)
    with pytest.raises(agent_exc.UnknownMigration):
        r.agents.api.get_status("a", r.m.migration_id)
