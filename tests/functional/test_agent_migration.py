"""Live migrations of real QEMU guests through the dcmigrate agents.

Real parts only: QEMU 10 guests (Linux + memory dirtier) in network
namespaces with tbf-shaped links, one real dcmigrate-agent daemon per lab
host, controlled over oslo.messaging RPC on a real RabbitMQ broker.  Every
migration compares the guests' RAM byte for byte (pmemsave) before the
destination resumes, and then checks that the guest runs on.
"""

from __future__ import annotations

import time

import pytest

from nova_dcmigrate.agent import exception as agent_exc
from nova_dcmigrate.agent import protocol
from nova_dcmigrate.lab.agents import LabAgents
from nova_dcmigrate.lab import exception as lab_exc
from nova_dcmigrate.lab.qemu import QemuGuest
from nova_dcmigrate.lab.ramcheck import compare_ram
from nova_dcmigrate.lab.topology import Lab
from nova_dcmigrate.lab import via_agents
from tests.functional.conftest import needs_root

pytestmark = [pytest.mark.lab, needs_root]


@pytest.fixture(scope="module")
def lab(rabbit_broker):
    with Lab({"src": "300mbit", "dst": "300mbit"}) as lab:
        yield lab


@pytest.fixture(scope="module")
def agents(lab):
    with LabAgents(lab) as agents:
        yield agents


def _resume_and_check(src: QemuGuest, dst: QemuGuest) -> None:
    cmp = compare_ram(src, dst)
    assert cmp.identical, (
        "RAM differs in %d pages (first at 0x%x)"
        % (cmp.differing_pages, cmp.first_difference or 0))
    lines = dst.alive_count()
    dst.cont()
    dst.wait_alive(lines, timeout=30)
    src.stop()


def _attempt(status: dict) -> dict:
    assert len(status["attempts"]) == 1
    return status["attempts"][0]


@pytest.mark.timeout(180)
def test_idle_guest_through_agents(lab, agents, guest_image):
    lab.set_rate("src", "300mbit")
    lab.set_rate("dst", "300mbit")
    src = QemuGuest.start(lab, "src", guest_image, memory_mib=256)
    src.wait_booted()
    m = via_agents.migrate_via_agents(lab, agents, src, "dst")
    s, d = _attempt(m.src_status), _attempt(m.dst_status)
    assert s["state"] == d["state"] == "completed"
    # Every byte QEMU sent crossed both agents, and the return path too.
    assert s["counters"]["stream_bytes"] == d["counters"]["stream_bytes"]
    assert s["counters"]["stream_bytes"] >= m.result.transferred_bytes
    assert s["counters"]["return_bytes"] == d["counters"]["return_bytes"] > 0
    assert d["counters"]["acked_offset"] == d["counters"]["stream_bytes"]
    # The destination agent held the QEMU's shared RAM (no page copies)
    # and let go of it at completion (the guest runs on it): what its
    # store keeps is zero pages and copies of QEMU's small ROM blocks.
    assert d["counters"]["ram_backing"] == 1, d
    store = m.dst_status["store"]
    assert store["backing_bytes"] == 0, store
    assert store["copied_bytes"] < 4 << 20, store
    assert 0 < store["bytes_held"] < m.result.ram_total_bytes, store
    _resume_and_check(src, m.dst_guest)


@pytest.mark.timeout(240)
def test_busy_guest_through_agents(lab, agents, guest_image):
    # 64 MiB dirtied at 40 MiB/s only converges on a link faster than the
    # dirty rate: 1 Gbit/s.
    lab.set_rate("src", "1gbit")
    lab.set_rate("dst", "1gbit")
    src = QemuGuest.start(lab, "src", guest_image, memory_mib=256,
                          dirty_mib=64, dirty_rate=40)
    src.wait_booted()
    time.sleep(1)      # let the dirtier run at full rate
    m = via_agents.migrate_via_agents(lab, agents, src, "dst")
    assert m.result.dirty_sync_count >= 2      # pages were resent
    s, d = _attempt(m.src_status), _attempt(m.dst_status)
    assert s["state"] == d["state"] == "completed"
    assert s["counters"]["pages"] > m.dst_status["store"]["pages"]
    _resume_and_check(src, m.dst_guest)


def _intrude(lab: Lab, agents: LabAgents, migration_id: str,
             secret: bytes) -> Exception:
    """Connect to the destination agent from the source host, claiming a
    migration with a secret we choose; return how it ended."""
    sock = lab.open_socket("src")
    sock.settimeout(10)
    sock.connect((lab.hosts["dst"].address, agents.peer_port))
    try:
        conn = protocol.connect(sock, "dst-agent", secret,
                                protocol.Channel.STREAM, migration_id, 0)
        # The acceptor proved a secret we made up: must not happen.
        conn.close()
        raise AssertionError("intruder was accepted")
    except (agent_exc.PeerAuthError, agent_exc.PeerClosed,
            agent_exc.PeerProtocolError) as err:
        return err
    finally:
        sock.close()


@pytest.mark.timeout(180)
def test_wrong_secret_peer_rejected_while_migration_continues(
        lab, agents, guest_image):
    lab.set_rate("src", "100mbit")
    lab.set_rate("dst", "100mbit")
    src = QemuGuest.start(lab, "src", guest_image, memory_mib=256)
    src.wait_booted()
    before = agents.api.peer_stats("dst")["rejected"]
    m = via_agents.start_via_agents(lab, agents, src, "dst")
    # A second migration is prepared on the destination and waits for its
    # source; an intruder that knows its id but not its secret must fail.
    import secrets
    import uuid
    mid2 = str(uuid.uuid4())
    agents.api.prepare_destination("dst", mid2, secrets.token_hex(32))
    time.sleep(1.0)
    assert src.query_migrate()["status"] == "active"
    err = _intrude(lab, agents, mid2, b"wrong-secret" * 4)
    assert isinstance(err, agent_exc.PeerAuthError), err
    # ... and so must one that claims the running migration.
    err = _intrude(lab, agents, m.migration_id, b"wrong-secret" * 4)
    assert isinstance(err, (agent_exc.PeerClosed, agent_exc.PeerAuthError))
    assert agents.api.peer_stats("dst")["rejected"] >= before + 2
    st2 = agents.api.get_status("dst", mid2)
    assert st2["attempts"][0]["state"] == "prepared"
    # The real migration was not disturbed.
    m.result = src.wait_migration(120)
    m.dst_guest.wait_status({"paused", "postmigrate"}, timeout=60)
    via_agents.collect_status(agents, m)
    assert _attempt(m.src_status)["state"] == "completed"
    agents.api.cleanup("dst", mid2)
    _resume_and_check(src, m.dst_guest)


@pytest.mark.timeout(240)
def test_destination_agent_dies_vm_stays_on_source(lab, agents, guest_image):
    lab.set_rate("src", "100mbit")
    lab.set_rate("dst", "100mbit")
    src = QemuGuest.start(lab, "src", guest_image, memory_mib=256,
                          dirty_mib=16, dirty_rate=5)
    src.wait_booted()
    m = via_agents.start_via_agents(lab, agents, src, "dst")
    time.sleep(1.5)
    assert src.query_migrate()["status"] == "active"
    agents.kill("dst")
    with pytest.raises(lab_exc.MigrationFailed):
        src.wait_migration(60)
    # Never both, never neither: the guest runs on the source only.
    assert src.status() == "running"
    lines = src.alive_count()
    src.wait_alive(lines, timeout=30)
    src_status = agents.api.get_status("src", m.migration_id)
    assert _attempt(src_status)["state"] == "failed"
    assert "lost" in _attempt(src_status)["error"]
    m.dst_guest.stop()
    # The source is migratable again once the agent is back.
    agents.start_agent("dst")
    agents.wait_ready("dst")
    lab.set_rate("src", "1gbit")
    lab.set_rate("dst", "1gbit")
    m2 = via_agents.migrate_via_agents(lab, agents, src, "dst")
    assert _attempt(m2.src_status)["state"] == "completed", \
        (m2.src_status, m2.dst_status)
    _resume_and_check(src, m2.dst_guest)
