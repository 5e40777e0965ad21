"""The libvirt-level controller: migrations and redirects through stock
libvirtd hosts and the dcmigrate agents (no patches to libvirt or QEMU).

Three lab hosts with their own libvirtd; guests are libvirt domains.  RAM
is compared exactly (the source's RAM block is held open through its
memfd and compared with the paused destination's, see
nova_dcmigrate.lab.libvirt_migration) before the destination resumes.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.functional.libvirt.conftest import LIBVIRT_LAB

pytestmark = LIBVIRT_LAB

libvirt = pytest.importorskip("libvirt",
                              reason="libvirt-python is not installed")

from nova_dcmigrate.lab.libvirt_guest import LibvirtGuest  # noqa: E402
from nova_dcmigrate.lab import libvirt_migration as lm  # noqa: E402
from nova_dcmigrate.virt.libvirt import controller as ctl  # noqa: E402

#: The module's lab (fixtures ``lab``, ``hosts``, ``agents`` in conftest).
LAB_HOSTS = ("src", "a", "b")
LAB_LINK = "300mbit"


class Run:
    """A guest on 'src' and a controller migrating it."""

    def __init__(self, lab, hosts, agents, image, **kw) -> None:
        self.lab, self.hosts, self.agents = lab, hosts, agents
        self.guest = LibvirtGuest.start(hosts["src"], image, memory_mib=256,
                                        dirty_mib=32, dirty_rate=8)
        self.guest.wait_booted()
        time.sleep(1)
        self.src_ram = self.guest.open_ram(hosts["src"])
        self.conn = hosts["src"].open()
        dom = self.conn.lookupByUUIDString(self.guest.uuid)
        self.m = ctl.RedirectableMigration(
            dom, self.info("src"), agents.api, self.info,
            extra_flags=libvirt.VIR_MIGRATE_PAUSED, **kw)

    def info(self, name: str) -> ctl.HostInfo:
        return ctl.HostInfo(name, self.hosts[name].uri,
                            self.lab.hosts[name].address,
                            self.agents.peer_port)

    def wait_progress(self, nbytes: float) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            st = self.m.status()
            if (st.job.get("memory_processed") or 0) >= nbytes:
                return
            time.sleep(0.05)
        raise AssertionError("no progress")

    def finish_and_check(self) -> str:
        attempt = self.m.wait(300)
        dst = self.hosts[attempt.host.name]
        # The source QEMU is gone (libvirt killed it after the switchover);
        # its RAM block is still readable through our descriptor.
        cmp = lm.compare_moved_ram(self.guest, self.hosts["src"],
                                   self.src_ram, dst)
        assert cmp.identical, "RAM differs in %d pages" % \
            cmp.differing_pages
        self.guest.moved_to(dst)
        lines = self.guest.alive_count()
        self.guest.domain(dst).resume()
        self.guest.wait_alive(lines, timeout=30)
        return attempt.host.name

    def close(self) -> None:
        os.close(self.src_ram)
        self.m.cleanup()
        self.guest.destroy()
        self.conn.close()


@pytest.fixture
def run(lab, hosts, agents, guest_image):
    runs = []

    def make(**kw):
        r = Run(lab, hosts, agents, guest_image, **kw)
        runs.append(r)
        return r
    yield make
    for r in runs:
        r.close()


def _listening(lab, host: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", lab.hosts[host].netns, "ss", "-tln"],
        capture_output=True, text=True, check=True).stdout


def _socket_dirs(host) -> list[str]:
    """Attempt directories in the host's /run/dcmigrate."""
    from nova_dcmigrate.lab import libvirt_host
    pid = libvirt_host._read_pid(host.libvirtd_pidfile)
    return subprocess.run(
        ["nsenter", "-t", str(pid), "-m", "ls", "-A", "/run/dcmigrate"],
        capture_output=True, text=True, check=True).stdout.split()


@pytest.mark.timeout(240)
def test_plain_migration_through_agents(run):
    r = run()
    r.m.start("a")
    assert r.finish_and_check() == "a"
    st = r.m.status()
    assert st.state == "completed" and st.attempt == 0
    assert st.bytes_from_source > 100e6


def test_unsupported_flags_refused(run, hosts):
    for flag in ("VIR_MIGRATE_PARALLEL", "VIR_MIGRATE_POSTCOPY",
                 "VIR_MIGRATE_TUNNELLED", "VIR_MIGRATE_TLS",
                 "VIR_MIGRATE_COMPRESSED"):
        with pytest.raises(ctl.UnsupportedMigrationFlags, match=flag):
            ctl.check_flags(ctl.BASE_FLAGS | getattr(libvirt, flag))


@pytest.mark.timeout(300)
def test_redirect_and_old_destination_cleaned(run, hosts, lab):
    r = run()
    r.m.start("a")
    r.wait_progress(40e6)
    r.m.redirect("b")
    # libvirt on A killed the old destination QEMU; A's agent still
    # relays what it stored.
    assert hosts["a"].qemu_pid(r.guest.name) is None
    assert r.finish_and_check() == "b"
    st = r.m.status()
    assert st.bytes_relayed.get("a", 0) > 0
    assert st.pages_deduplicated > 0
    assert r.guest.name not in [d.name() for d in
                                hosts["a"].conn.listAllDomains()]


@pytest.mark.timeout(300)
def test_redirect_after_old_destination_qemu_killed(run, hosts, agents):
    r = run()
    r.m.start("a")
    r.wait_progress(40e6)
    # A's libvirtd kills the incoming QEMU (as when A's compute host gives
    # up on the domain); A's agent keeps the pages it stored.
    r.guest.domain(hosts["a"]).destroy()
    assert hosts["a"].qemu_pid(r.guest.name) is None
    old = r.m.current
    assert old.thread is not None
    old.thread.join(60)
    assert old.outcome == "failed", old.outcome
    assert r.guest.state(hosts["src"])[0] == libvirt.VIR_DOMAIN_RUNNING
    held = agents.api.get_status("a", r.m.migration_id)["store"]["pages"]
    assert held > 1000, held
    new = r.m.redirect("b")
    assert new.holders == ["a"]
    assert r.finish_and_check() == "b"
    st = r.m.status()
    assert st.bytes_relayed.get("a", 0) > 0
    assert st.pages_deduplicated > 0
    for h in ("a", "src"):
        assert r.guest.name not in [d.name() for d in
                                    hosts[h].conn.listAllDomains()]


@pytest.mark.timeout(400)
def test_two_redirects(run):
    r = run()
    r.m.start("a")
    r.wait_progress(30e6)
    r.m.redirect("b")
    time.sleep(1.5)
    r.m.redirect("a")
    assert r.finish_and_check() == "a"
    assert len(r.m.attempts) == 3


@pytest.mark.timeout(300)
def test_user_abort_during_redirect_leaves_guest_on_source(run, hosts,
                                                           lab):
    lab.set_rate("src", "50mbit")
    try:
        r = run()
        r.m.start("a")
        r.wait_progress(20e6)
        att = r.m.redirect("b")
        time.sleep(1.0)
        r.m.abort()
        assert r.m.state is ctl.State.ABORTED
        # The guest runs on the source, and only there.
        assert r.guest.state(hosts["src"])[0] == libvirt.VIR_DOMAIN_RUNNING
        r.guest.wait_alive(r.guest.alive_count(), timeout=30)
        for h in ("a", "b"):
            assert r.guest.name not in [d.name() for d in
                                        hosts[h].conn.listAllDomains()]
            assert r.agents.api.list_migrations(h) == []
            assert "127.0.0.1:" not in _listening(lab, h)
            assert os.path.basename(os.path.dirname(att.socket)) not in \
                _socket_dirs(hosts[h])
        assert r.agents.api.list_migrations("src") == []
        # ... and can be migrated again.
        r.m2 = None
    finally:
        lab.set_rate("src", "300mbit")


class _RefusingSource:
    """The lab's real agent API, except that the source agent's prepare of
    a redirected attempt fails (a fault injected in front of the real
    agents, as a refusing or unreachable source agent would fail it)."""

    def __init__(self, api) -> None:
        self._api = api

    def prepare_source(self, host, migration_id, secret, address, port,
                       attempt=0, **kw):
        if attempt >= 1:
            from nova_dcmigrate.agent import exception as agent_exc
            raise agent_exc.InvalidRequest(migration_id=migration_id,
                                           reason="injected refusal")
        return self._api.prepare_source(host, migration_id, secret,
                                        address, port, attempt, **kw)

    def __getattr__(self, name):
        return getattr(self._api, name)


@pytest.mark.timeout(300)
def test_new_destination_not_ready_migration_goes_on(run, hosts, agents):
    """Issue 13 part 4: the next attempt's agents are prepared before the
    running attempt is stopped; when that fails, nothing of the running
    attempt was touched and it completes to its destination."""
    r = run()
    r.m.agents = _RefusingSource(agents.api)
    r.m.start("a")
    r.wait_progress(30e6)
    with pytest.raises(ctl.RedirectRefused, match="could not be prepared"):
        r.m.redirect("b")
    assert r.m.state is ctl.State.RUNNING
    assert [a.host.name for a in r.m.attempts] == ["a"]
    assert r.m.current.outcome == "running"
    # b's half of attempt 1 was aborted and b forgot the migration.
    with pytest.raises(Exception):
        agents.api.get_status("b", r.m.migration_id)
    assert r.finish_and_check() == "a"
