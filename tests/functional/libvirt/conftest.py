"""Fixtures of the libvirt lab tests: one lab per test module, a libvirtd
per lab host, and a dcmigrate agent per lab host.

A test module names its lab hosts in ``LAB_HOSTS`` and their link in
``LAB_LINK`` (both directions; default 1 Gbit/s), and marks itself with
:data:`LIBVIRT_LAB` (root, libvirtd and virtlogd installed).  Modules get
separate labs, so their host names and links never clash.

libvirt-python is imported lazily: where it is missing the test modules
skip themselves (``pytest.importorskip``) before any fixture runs.
"""

from __future__ import annotations

import os
import shutil
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
def agents(lab: Any, hosts: dict[str, Any],
           rabbit_broker: Any) -> Iterator[Any]:
    """A dcmigrate-agent on every lab host, with the RPC client; each runs
    in its libvirtd's mount namespace (``/run/dcmigrate`` there is where
    the libvirtd and QEMU of that host meet it)."""
    from nova_dcmigrate.lab.agents import LabAgents

    with LabAgents(lab, mount_ns=agent_mount_ns(hosts)) as agents:
        yield agents


def agent_mount_ns(hosts: dict[str, Any]) -> dict[str, int]:
    """host -> the pid of its libvirtd (whose mount namespace an agent
    joins)."""
    from nova_dcmigrate.lab.agents import libvirt_mount_ns

    return libvirt_mount_ns(hosts)
