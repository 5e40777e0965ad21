"""The libvirt-level controller: migrations and redirects through stock
libvirtd hosts and the dcmigrate agents (no patches to libvirt or QEMU).

Three lab hosts with their own libvirtd; guests are libvirt domains.  RAM
is compared exactly (the source's RAM block is held open through its
memfd and compared with the paused destination's, see
nova_dcmigrate.lab.libvirt_migration) before the destination resumes.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time

import pytest

from tests.functional.libvirt.conftest import LIBVIRT_LAB

pytestmark = LIBVIRT_LAB

libvirt = pytest.importorskip("libvirt",
                              reason="libvirt-python is not installed")

from nova_dcmigrate.virt import attempts  # noqa: E402
from nova_dcmigrate.virt.libvirt import controller as ctl  # noqa: E402

#: The module's lab (fixtures ``lab``, ``hosts``, ``agents``, ``run`` in
#: conftest).
LAB_HOSTS = ("src", "a", "b")
LAB_LINK = "300mbit"


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


@pytest.mark.timeout(300)
def test_redirect_does_not_contact_holders_the_hints_give_nothing(
        run, agents):
    # Never worse than restarting: at the hinted rates (a 1 Gbit/s source,
    # a 10 Mbit/s old destination) the holder would carry under a tenth,
    # so the new destination does not connect to it before the source
    # starts (its inventory would delay the source's first byte), nor
    # afterwards (count_needed_pages, a benchmark aid, is off); RAM is
    # still exact.
    r = run()
    base = r.m.resolve

    def info(name):
        return dataclasses.replace(
            base(name), upload_rate=125e6 if name == "src" else 1.25e6)
    r.m.resolve = info
    r.m.source = info("src")
    r.m.start("a")
    r.wait_progress(40e6)
    new = r.m.redirect("b")
    assert new.holders == ["a"]
    assert r.finish_and_check() == "b"
    (d,) = [a for a in attempts.attempt_entries(
        agents.api.get_status("b", r.m.migration_id), new.number)
        if a.get("role") == "destination"]
    red = d["redirect"]
    assert red["holders_skipped"] and red["relay_done"], red
    assert red["holders"] == {} and red["relay_pages_injected"] == 0, red
    assert red["needed"] is None, red
    assert not r.m.status().bytes_relayed.get("a")


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


#: A directory private to each lab host (its own tmpfs /run): a disk path
#: the same on both hosts must not be one file.
DISK_DIR = "/run/dcm-lab-disk"
DISK_MIB = 16


def _in_host(host, path: str) -> str:
    """``path`` of the host's mount namespace, seen from ours."""
    from nova_dcmigrate.lab import libvirt_host

    pid = libvirt_host._read_pid(host.libvirtd_pidfile)
    return "/proc/%d/root%s" % (pid, path)


def _qemu_img(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["qemu-img", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.timeout(400)
def test_block_migration_through_agents(run, hosts, tmp_path):
    """Non-shared disk (qcow2) migrated with the RAM: the memory stream
    through the agents (unix://), the disk in libvirt's NBD stream to the
    destination (disks_uri tcp://<destination>, set by the controller).
    Disk contents and RAM identical afterwards."""
    name = "blk-%d.qcow2" % os.getpid()
    path = "%s/%s" % (DISK_DIR, name)
    src_file, dst_file = (_in_host(hosts[h], path) for h in ("src", "a"))
    for f in (src_file, dst_file):
        os.makedirs(os.path.dirname(f), exist_ok=True)
    raw = tmp_path / "disk.raw"
    with open(raw, "wb") as f:
        # Data with holes: the copy must keep both.
        for i in range(DISK_MIB):
            f.write(os.urandom(1 << 19) + bytes(1 << 19) if i % 3 else
                    bytes(1 << 20))
    try:
        assert _qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw),
                         src_file).returncode == 0
        # Nova pre-creates the destination disk too.
        assert _qemu_img("create", "-f", "qcow2", dst_file,
                         "%dM" % DISK_MIB).returncode == 0
        assert _qemu_img("compare", "-U", src_file, dst_file).returncode \
            == 1                                    # differ before
        r = run(disk=path,
                extra_flags=(libvirt.VIR_MIGRATE_PAUSED |
                             libvirt.VIR_MIGRATE_NON_SHARED_DISK),
                params={libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS: ["vda"]})
        r.m.start("a")
        assert r.finish_and_check() == "a"          # RAM identical
        cmp = _qemu_img("compare", "-U", src_file, dst_file)
        assert cmp.returncode == 0, cmp.stdout + cmp.stderr
        # The memory went through the agents.
        st = r.agents.api.get_status("a", r.m.migration_id)
        assert st["attempts"][0]["counters"]["stream_bytes"] >= 32 << 20
    finally:
        for f in (src_file, dst_file):
            if os.path.exists(f):
                os.unlink(f)


def test_unix_disks_uri_and_block_migration_with_tls_refused():
    """The agents relay only the memory stream: a unix:// disks URI would
    reach nothing on the other host, and with TLS the disks would cross
    in clear.  Refused when the controller is made, before any libvirt
    call (no domain is needed)."""
    src = ctl.HostInfo("src", "qemu+tcp://x/system", "10.0.0.1", 1)
    with pytest.raises(ctl.UnsupportedDisksUri, match="NBD disk stream"):
        ctl.RedirectableMigration(
            None, src, None, lambda h: src,
            extra_flags=libvirt.VIR_MIGRATE_NON_SHARED_DISK,
            params={libvirt.VIR_MIGRATE_PARAM_DISKS_URI:
                    "unix:///run/dcmigrate/nbd.sock"})
    with pytest.raises(ctl.UnsupportedDisksUri, match="in clear"):
        ctl.RedirectableMigration(
            None, src, None, lambda h: src, tls=True,
            extra_flags=libvirt.VIR_MIGRATE_NON_SHARED_DISK)
    # Without disks, TLS is fine; a tcp disks URI is passed through.
    ctl.RedirectableMigration(None, src, None, lambda h: src, tls=True)
    ctl.RedirectableMigration(
        None, src, None, lambda h: src,
        extra_flags=libvirt.VIR_MIGRATE_NON_SHARED_DISK,
        params={libvirt.VIR_MIGRATE_PARAM_DISKS_URI: "tcp://10.0.0.2"})
