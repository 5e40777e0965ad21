"""Live migration through the dcmigrate agents, driven over QMP.

Same plumbing as libvirt's P2P migration with ``URI=unix://<path>``: the
agents are prepared over RPC first and return their attempt's UNIX socket
path; the destination QEMU listens there (``migrate-incoming unix:``), the
source QEMU connects to the source agent's socket (``migrate unix:``), and
the agents carry the stream between the hosts.  The lab's QEMU hosts share
one filesystem, so each agent has its own socket_dir and the two paths
differ (under libvirt, each host has its own ``/run`` and the path is
one).
"""

from __future__ import annotations

import dataclasses
import secrets
import uuid
from typing import Any, Mapping

from oslo_log import log as logging

from nova_dcmigrate.lab.agents import LabAgents
from nova_dcmigrate.lab.direct import UNLIMITED_BANDWIDTH
from nova_dcmigrate.lab.qemu import MigrationResult
from nova_dcmigrate.lab.qemu import QemuGuest
from nova_dcmigrate.lab.topology import Lab

LOG = logging.getLogger(__name__)


@dataclasses.dataclass
class AgentMigration:
    migration_id: str
    secret: str
    #: (source agent's socket, destination QEMU's socket)
    sockets: tuple[str, str]
    src_host: str
    dst_host: str
    dst_guest: QemuGuest
    result: MigrationResult | None = None
    src_status: dict[str, Any] | None = None
    dst_status: dict[str, Any] | None = None


def start_via_agents(lab: Lab, agents: LabAgents, src_guest: QemuGuest,
                     dst_host: str, *,
                     capabilities: Mapping[str, bool] | None = None,
                     parameters: Mapping[str, Any] | None = None,
                     migration_id: str | None = None,
                     secret: str | None = None) -> AgentMigration:
    """Prepare both agents and start the migration; returns at once."""
    assert agents.api is not None
    mid = migration_id or str(uuid.uuid4())
    secret = secret or secrets.token_hex(32)
    dst = QemuGuest.start(
        lab, dst_host, src_guest.image, memory_mib=src_guest.memory_mib,
        dirty_mib=src_guest.dirty_mib, dirty_rate=src_guest.dirty_rate,
        incoming="defer")
    try:
        caps = {k.replace("_", "-"): bool(v)
                for k, v in (capabilities or {}).items()}
        if caps.get("switchover-ack"):
            dst.set_migration_caps(**{"switchover-ack": True})
        else:
            dst.set_migration_caps()
        dpath = agents.api.prepare_destination(
            dst_host, mid, secret, tls=agents.tls)["socket"]
        dst.migrate_incoming("unix:" + dpath)
        spath = agents.api.prepare_source(
            src_guest.host, mid, secret, lab.hosts[dst_host].address,
            agents.peer_port, tls=agents.tls)["socket"]
        src_guest.set_migration_caps(**caps)
        src_guest.set_migration_params(**{
            "max-bandwidth": UNLIMITED_BANDWIDTH,
            **{k.replace("_", "-"): v for k, v in (parameters or {}).items()}})
        LOG.info("Agent migration %s: %s (%s) -> %s via agents, %s -> %s",
                 mid, src_guest.name, src_guest.host, dst_host, spath,
                 dpath)
        src_guest.migrate("unix:" + spath)
    except BaseException:
        dst.stop()
        raise
    return AgentMigration(mid, secret, (spath, dpath), src_guest.host,
                          dst_host, dst)


def migrate_via_agents(lab: Lab, agents: LabAgents, src_guest: QemuGuest,
                       dst_host: str, *, timeout: float = 600.0,
                       **kwargs: Any) -> AgentMigration:
    """Live-migrate ``src_guest`` to ``dst_host`` through the agents.

    :returns: the migration; its destination guest is paused with the
        migrated state (nothing is resumed), and the agents' final status
        is attached.
    :raises MigrationFailed, MigrationTimeout: as :func:`migrate_direct`;
        the source guest keeps running after a failure.
    """
    m = start_via_agents(lab, agents, src_guest, dst_host, **kwargs)
    assert agents.api is not None
    try:
        try:
            m.result = src_guest.wait_migration(timeout)
        except Exception:
            if src_guest.query_migrate().get("status") not in (
                    "completed", "failed", "cancelled"):
                src_guest.migrate_cancel()
            raise
        m.dst_guest.wait_status({"paused", "postmigrate"}, timeout=60)
    except BaseException:
        m.dst_guest.stop()
        raise
    finally:
        collect_status(agents, m)
    return m


def collect_status(agents: LabAgents, m: AgentMigration,
                   wait: float = 10.0) -> None:
    """Fetch both agents' view of the attempt (waiting for a final state)."""
    import time
    assert agents.api is not None
    deadline = time.monotonic() + wait
    while True:
        try:
            m.src_status = agents.api.get_status(m.src_host, m.migration_id)
            m.dst_status = agents.api.get_status(m.dst_host, m.migration_id)
        except Exception as err:  # noqa: BLE001 - status is best effort
            LOG.warning("cannot fetch agent status of %s: %s",
                        m.migration_id, err)
            return
        states = [a["state"] for st in (m.src_status, m.dst_status)
                  for a in st["attempts"]]
        if all(s in ("completed", "failed", "aborted") for s in states) \
                or time.monotonic() > deadline:
            return
        time.sleep(0.1)
