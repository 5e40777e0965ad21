"""Fixtures of the libvirt lab tests: one lab per test module, a libvirtd
per lab host, and a dcmigrate agent per lab host.

A test module names its lab hosts in ``LAB_HOSTS`` and their link in
``LAB_LINK`` (both directions; default 1 Gbit/s), and marks itself with
:data:`LIBVIRT_LAB` (root, libvirtd and virtlogd installed).  Modules get
separate labs, so their host names and links never clash.  Optional:
``AGENT_TLS`` (agents' peer links over TLS), ``AGENT_CONF`` (extra lines
of the agents' ``[dcmigrate_agent]`` section) and ``LAB_RUN`` (the
:class:`LabRun` subclass the ``run`` fixture makes).

libvirt-python is imported lazily: where it is missing the test modules
skip themselves (``pytest.importorskip``) before any fixture runs.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any, Iterator

import pytest

from tests.functional.conftest import needs_root

#: Marks of every libvirt lab test module (``pytestmark = LIBVIRT_LAB``).
LIBVIRT_LAB = [
    pytest.mark.lab,
    needs_root,
    pytest.mark.skipif(shutil.which("libvirtd") is None or
                       shutil.which("virtlogd") is None,
                       reason="libvirtd/virtlogd are not installed (run "
                              "tools/install-system-deps.sh)"),
]


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The module's lab: ``LAB_HOSTS`` with ``LAB_LINK`` links."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    from nova_dcmigrate.lab.topology import Lab

    names = getattr(request.module, "LAB_HOSTS")
    link = getattr(request.module, "LAB_LINK", "1gbit")
    with Lab({name: link for name in names}) as lab:
        yield lab


@pytest.fixture(scope="module")
def hosts(lab: Any) -> Iterator[dict[str, Any]]:
    """A libvirtd on every lab host; afterwards none of their processes
    (libvirtd, virtlogd, QEMU) may be left."""
    from nova_dcmigrate.lab import libvirt_host

    hosts = libvirt_host.start_libvirt_hosts(lab)
    yield hosts
    for host in hosts.values():
        host.stop()
    assert not [pid for host in hosts.values() for pid in host.pids()]


@pytest.fixture(scope="module")
def agents(request: pytest.FixtureRequest, lab: Any, hosts: dict[str, Any],
           rabbit_broker: Any) -> Iterator[Any]:
    """A dcmigrate-agent on every lab host, with the RPC client; each runs
    in its libvirtd's mount namespace (``/run/dcmigrate`` there is where
    the libvirtd and QEMU of that host meet it).  ``AGENT_TLS`` and
    ``AGENT_CONF`` of the module configure them."""
    from nova_dcmigrate.lab.agents import LabAgents

    with LabAgents(lab, extra_conf=getattr(request.module, "AGENT_CONF", ""),
                   tls=getattr(request.module, "AGENT_TLS", False),
                   mount_ns=agent_mount_ns(hosts)) as agents:
        yield agents


class LabRun:
    """A guest on 'src' and a controller migrating it, RAM checked.

    :param kw: passed to ``RedirectableMigration`` (``tls`` defaults to
        the agents' own setting).
    """

    #: ``finish_and_check`` waits this long for the migration.
    WAIT_S = 300
    #: ... and this long for the resumed guest's heartbeat.
    ALIVE_S = 30

    def __init__(self, lab: Any, hosts: dict[str, Any], agents: Any,
                 image: Any, *, memory_mib: int = 256, dirty_mib: int = 32,
                 dirty_rate: int = 8, boot_timeout: float = 120.0,
                 disk: str | None = None, extra_flags: int | None = None,
                 **kw: Any) -> None:
        import libvirt

        from nova_dcmigrate.lab.libvirt_guest import LibvirtGuest
        from nova_dcmigrate.virt.libvirt import controller as ctl

        self.lab, self.hosts, self.agents = lab, hosts, agents
        self.guest = LibvirtGuest.start(hosts["src"], image,
                                        memory_mib=memory_mib,
                                        dirty_mib=dirty_mib,
                                        dirty_rate=dirty_rate, disk=disk)
        self.src_ram: int | None = None
        self.conn: Any = None
        try:
            self.guest.wait_booted(timeout=boot_timeout)
            time.sleep(1)
            self.src_ram = self.guest.open_ram(hosts["src"])
            self.conn = hosts["src"].open()
            dom = self.conn.lookupByUUIDString(self.guest.uuid)
            kw.setdefault("tls", agents.tls)
            self.m = ctl.RedirectableMigration(
                dom, self.info("src"), agents.api, self.info,
                extra_flags=(libvirt.VIR_MIGRATE_PAUSED
                             if extra_flags is None else extra_flags),
                **kw)
        except BaseException:
            self._close_guest()
            raise

    def info(self, name: str) -> Any:
        from nova_dcmigrate.virt.libvirt import controller as ctl

        return ctl.HostInfo(name, self.hosts[name].uri,
                            self.lab.hosts[name].address,
                            self.agents.peer_port)

    def wait_progress(self, nbytes: float) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if (self.m.status().job.get("memory_processed") or 0) >= nbytes:
                return
            time.sleep(0.05)
        raise AssertionError("no progress")

    def finished(self) -> None:
        """Called once the migration ended, before RAM is compared."""

    def finish_and_check(self) -> str:
        from nova_dcmigrate.lab import libvirt_migration as lm

        attempt = self.m.wait(self.WAIT_S)
        self.finished()
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
        self.guest.wait_alive(lines, timeout=self.ALIVE_S)
        return attempt.host.name

    def _close_guest(self) -> None:
        if self.src_ram is not None:
            os.close(self.src_ram)
            self.src_ram = None
        self.guest.destroy()
        if self.conn is not None:
            self.conn.close()

    def close(self) -> None:
        self.m.cleanup()
        self._close_guest()


@pytest.fixture
def run(request: pytest.FixtureRequest, lab: Any, hosts: dict[str, Any],
        agents: Any, guest_image: Any) -> Iterator[Any]:
    """``run(**kw)`` makes a ``LAB_RUN`` (default :class:`LabRun`); all
    are closed after the test."""
    cls = getattr(request.module, "LAB_RUN", LabRun)
    runs: list[LabRun] = []

    def make(**kw: Any) -> LabRun:
        r = cls(lab, hosts, agents, guest_image, **kw)
        runs.append(r)
        return r
    yield make
    for r in runs:
        r.close()


def agent_mount_ns(hosts: dict[str, Any]) -> dict[str, int]:
    """host -> the pid of its libvirtd (whose mount namespace an agent
    joins)."""
    from nova_dcmigrate.lab.agents import libvirt_mount_ns

    return libvirt_mount_ns(hosts)
