"""AgentTransport's agent bookkeeping, without Nova or libvirt.

Real in-process AgentManagers answer (called directly, no RPC); the Nova
side (the libvirt job) is covered on Nova's harness in
tests/functional/nova/test_agent_transport.py.
"""

from __future__ import annotations

import functools
import os
import socket
import types
import uuid

import pytest

import nova_dcmigrate.conf
from nova_dcmigrate.virt import attempts
from nova_dcmigrate.virt.libvirt import flags
from nova_dcmigrate.virt.libvirt import transport
from tests.unit.agent import inprocess
from tests.unit.agent.inprocess import InProcessAgents

CONF = nova_dcmigrate.conf.CONF


#: Agents before RPC 1.4: ``abort`` ends every session of a migration.
Agents = functools.partial(InProcessAgents, attempt_abort=False,
                           relay_wait=False)
#: Agents of RPC 1.5: ``abort`` may name one attempt, ``wait_relayed``.
AttemptAgents = InProcessAgents


@pytest.fixture
def cluster():
    managers = {}
    try:
        for host in ("src", "a", "b"):
            managers[host] = inprocess.start_agent(host, CONF,
                                                   session_timeout=60.0)
        yield managers
    finally:
        CONF.clear_override("agent_addresses", group="dcmigrate_compute")
        for m in managers.values():
            m.stop()


def _md(migration_uuid=None, target=None):
    return types.SimpleNamespace(
        migration=types.SimpleNamespace(uuid=migration_uuid),
        target_connect_addr=target)


def test_unsupported_flags_use_the_callers_module():
    lv = types.SimpleNamespace(VIR_MIGRATE_PARALLEL=4, VIR_MIGRATE_TLS=8)
    assert flags.unsupported(1 | 4 | 8, lv) == [
        "VIR_MIGRATE_PARALLEL", "VIR_MIGRATE_TLS"]
    # A flag the module does not define is never set.
    assert flags.unsupported(0xffff, types.SimpleNamespace()) == []
    assert "multifd" in flags.describe(["VIR_MIGRATE_PARALLEL"])


def test_paused_guest_drops_postcopy_as_nova_does():
    lv = types.SimpleNamespace(VIR_MIGRATE_POSTCOPY=32768)
    drv = types.SimpleNamespace(_live_migration_flags=1 | 32768,
                                _block_migration_flags=3)
    paused = types.SimpleNamespace(vm_state="paused")
    active = types.SimpleNamespace(vm_state="active")
    assert transport.migration_flags_for(drv, paused, False, lv) == 1
    assert transport.migration_flags_for(drv, active, False, lv) == 32769
    assert transport.migration_flags_for(drv, active, True, lv) == 3


def test_endpoint_address_order(cluster):
    t = transport.AgentTransport(Agents(cluster))
    CONF.set_override("agent_addresses", {"a": "10.0.0.9"},
                      group="dcmigrate_compute")
    port = cluster["a"].listener.port
    assert t.endpoint("a", _md(target="10.1.1.1")) == \
        transport.AgentEndpoint("a", "10.0.0.9", port)
    # Not listed: the destination's live_migration_inbound_addr.
    assert t.endpoint("b", _md(target="10.1.1.1")).address == "10.1.1.1"
    # Neither: the name, resolved.
    assert t.endpoint("b", _md(target="localhost")).address in (
        "127.0.0.1", "::1")


def test_endpoint_errors_are_clear(cluster, monkeypatch):
    t = transport.AgentTransport(Agents(cluster))

    def fail(*_a, **_kw):
        raise socket.gaierror("no such name")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    CONF.set_override("agent_addresses", {}, group="dcmigrate_compute")
    with pytest.raises(transport.AgentTransportError,
                       match="agent_addresses"):
        t.endpoint("a", _md())
    with pytest.raises(transport.AgentTransportError,
                       match="no dcmigrate agent answers for host nowhere"):
        t.endpoint("nowhere", _md(target="10.0.0.1"))


def test_ping_and_destination_check(cluster):
    agents = Agents(cluster)
    t = transport.AgentTransport(agents)
    assert t.ping("a")["peer_port"] == cluster["a"].listener.port
    # A redirect's check waits agent_ping_timeout, not agent_rpc_timeout.
    CONF.set_override("agent_ping_timeout", 3, group="dcmigrate_compute")
    try:
        t.check_destination("b")
        with pytest.raises(transport.AgentUnreachable,
                           match="no dcmigrate agent answers for host "
                                 "nowhere: no agent on host nowhere"):
            t.check_destination("nowhere")
    finally:
        CONF.clear_override("agent_ping_timeout", group="dcmigrate_compute")
    assert agents.ping_timeouts == [None, 3, 3]
    assert isinstance(transport.AgentUnreachable(host="h", reason="r"),
                      transport.AgentTransportError)
    # Nova's stock job needs nothing on the new host.
    assert transport.DirectLibvirtTransport().check_destination(
        "nowhere") is None


def test_agent_api_ping_timeout_only_when_given():
    from nova_dcmigrate.agent import rpcapi

    prepared = []

    class Client:
        def prepare(self, **kwargs):
            prepared.append(kwargs)
            return types.SimpleNamespace(
                call=lambda ctxt, method, **kw: {"method": method})

    api = rpcapi.AgentAPI.__new__(rpcapi.AgentAPI)
    api.client = Client()
    assert api.ping("h", timeout=2.5) == {"method": "ping"}
    api.ping("h")
    # prepare(timeout=None) would wait forever: not passed at all.
    assert prepared == [{"server": "h", "version": "1.0", "timeout": 2.5},
                        {"server": "h", "version": "1.0"}]


def test_attempts_share_id_and_secret_and_list_holders(cluster):
    agents = Agents(cluster)
    t = transport.AgentTransport(agents)
    inst = types.SimpleNamespace(uuid="inst-1")
    mid = str(uuid.uuid4())
    mig = t._migration(inst, _md(mid), "src")
    assert t._migration(inst, _md(str(uuid.uuid4())), "src") is mig
    assert mig.migration_id == mid

    first = t._prepare(mig, "a", _md(mid))
    assert first.holders == []
    t._abort_agents(mig, ["src", "a"])      # the redirect stopped it
    second = t._prepare(mig, "b", _md(mid))
    assert second.holders == ["a"]
    assert second.socket != first.socket
    assert second.socket == cluster["b"].sessions[(mid, 1)].socket_path
    dst = cluster["b"].sessions[(mid, 1)]
    assert dst.holders == [{"host": "a", "address": "127.0.0.1",
                            "port": cluster["a"].listener.port}]
    assert {cluster[h].secrets[mid] for h in ("src", "a", "b")} == \
        {mig.secret}
    assert mid in cluster["a"].stores      # kept for the relay

    with pytest.raises(transport.AgentTransportError, match="the source"):
        t._prepare(mig, "src", _md(mid))

    t.end_migration("inst-1")
    assert all(not m.list_migrations({}) for m in cluster.values())
    assert t.migrations == {}


def test_socket_dir_mismatch_is_refused_clearly(cluster):
    t = transport.AgentTransport(Agents(cluster, same_path=False))
    mid = str(uuid.uuid4())
    try:
        mig = t._migration(types.SimpleNamespace(uuid="i"), _md(mid), "src")
        with pytest.raises(attempts.SocketPathMismatch,
                           match="socket_dir must be the same") as ei:
            t._prepare(mig, "a", _md())
        assert ei.value.kwargs["source"] != ei.value.kwargs["dest"]
        # Nothing left running anywhere, no socket directory left.
        for h in ("src", "a"):
            for s in cluster[h].sessions.values():
                assert s.state.value == "aborted"
                assert not os.path.exists(s.socket_dir)
    finally:
        t.end_migration("i")


def test_agent_transport_uses_the_unix_socket_and_agent_tls():
    """migrateToURI3 gets unix://, no listen address, a disks URI for a
    block migration, and no VIR_MIGRATE_TLS (the agents carry it)."""
    lv = types.SimpleNamespace(VIR_MIGRATE_TLS=8, VIR_MIGRATE_PARALLEL=4)
    seen = []
    dom = types.SimpleNamespace(
        migrateToURI3=lambda uri, params, flags: seen.append(
            (uri, params, flags)))
    mig = transport.AgentMigration("m", "s" * 64, "src")
    att = transport.AgentAttempt(
        0, transport.AgentEndpoint("b", "10.0.0.2", 16590),
        "/run/dcmigrate/x.0/migration.sock", [])
    d = transport._AgentDomain(dom, transport.AgentTransport(object()),
                               mig, att, lv)
    d.migrateToURI3("qemu+tcp://b/system",
                    {"listen_address": "10.0.0.2",
                     "migrate_disks": ["vda"]}, 1 | 8)
    uri, params, fl = seen[0]
    assert params["migrate_uri"] == \
        "unix:///run/dcmigrate/x.0/migration.sock"
    assert "listen_address" not in params
    assert params["disks_uri"] == "tcp://10.0.0.2"
    assert fl == 1
    t = transport.AgentTransport(object())
    assert t.unsupported_flags(1 | 8, lv) == []
    assert t.unsupported_flags(1 | 4 | 8, lv) == ["VIR_MIGRATE_PARALLEL"]


def test_downtime_steps_wait_for_the_gate():
    t = transport.AgentTransport(object())
    applied = []
    guest = types.SimpleNamespace(
        uuid="i", migrate_configure_max_downtime=applied.append)
    t.configure_downtime(guest, 50)          # no migration: straight on
    mig = transport.AgentMigration("m", "s" * 64, "src", gated=True)
    t.migrations["i"] = mig
    t.configure_downtime(guest, 100)
    assert applied == [50] and mig.wanted_downtime == 100
    mig.gated = False
    t.configure_downtime(guest, 150)
    assert applied == [50, 150]


def test_agent_api_needs_1_3_for_prepares():
    from nova_dcmigrate.agent import exception as agent_exc
    from nova_dcmigrate.agent import rpcapi

    sent = []

    class Client:
        def __init__(self, cap):
            self.cap = cap

        def can_send_version(self, v):
            return tuple(map(int, v.split("."))) <= self.cap

        def prepare(self, **kwargs):
            return types.SimpleNamespace(
                call=lambda ctxt, method, **kw: sent.append(
                    (kwargs["version"], method, kw)) or {"socket": "/s"})

    api = rpcapi.AgentAPI.__new__(rpcapi.AgentAPI)
    api.client = Client((1, 2))
    with pytest.raises(agent_exc.InvalidRequest, match="below 1.3"):
        api.prepare_destination("h", "m", "s" * 64)
    with pytest.raises(agent_exc.InvalidRequest, match="below 1.3"):
        api.prepare_source("h", "m", "s" * 64, "10.0.0.1", 1)
    assert sent == []
    api.client = Client((1, 3))
    api.prepare_destination("h", "m", "s" * 64, 1)
    api.prepare_source("h", "m", "s" * 64, "10.0.0.1", 1, 1, tls=True)
    assert [(v, m) for v, m, _kw in sent] == [
        ("1.3", "prepare_destination"), ("1.3", "prepare_source")]
    # tls only sent when asked for (an agent without it still answers).
    assert "tls" not in sent[0][2] and sent[1][2]["tls"] is True
    assert "qemu_port" not in sent[0][2] and "listen_port" not in sent[1][2]


def test_unencrypted_warning_logged_once(monkeypatch):
    warned = []
    monkeypatch.setattr(transport.LOG, "warning",
                        lambda msg, *a: warned.append(msg))
    monkeypatch.setattr(transport, "_UNENCRYPTED_WARNED",
                        transport.threading.Event())
    transport._warn_unencrypted_once()
    transport._warn_unencrypted_once()
    assert len(warned) == 1 and "unencrypted" in warned[0]


def _states(manager, mid):
    return {a: s.state.value for (m, a), s in manager.sessions.items()
            if m == mid}


def test_next_attempt_prepared_before_the_stop(cluster):
    """Part 4 of issue 13: the new attempt's agents are prepared while
    the running attempt goes on; stopping it aborts only its sessions."""
    agents = AttemptAgents(cluster)
    t = transport.AgentTransport(agents)
    inst = types.SimpleNamespace(uuid="inst-ahead")
    mid = str(uuid.uuid4())
    mig = t._migration(inst, _md(mid), "src")
    try:
        t._prepare(mig, "a", _md(mid))
        t.prepare_next(inst, "a", _md(mid))     # the running destination
        assert mig.ahead is None
        t.prepare_next(inst, "b", _md(mid))
        ahead = mig.ahead
        assert ahead is not None and ahead.number == 1
        assert ahead.holders == ["a"]
        assert _states(cluster["src"], mid) == {0: "prepared",
                                                1: "prepared"}
        assert _states(cluster["b"], mid) == {1: "prepared"}
        # The stop of attempt 0 (stop_attempt's abort) spares attempt 1.
        t._abort_agents(mig, ["src", "a"], 0)
        assert _states(cluster["src"], mid) == {0: "aborted",
                                                1: "prepared"}
        calls = len(agents.calls)
        second = t._prepare(mig, "b", _md(mid))
        assert second is ahead and mig.ahead is None
        assert len(agents.calls) == calls       # nothing prepared again
        assert mig.attempts == [mig.attempts[0], ahead]
    finally:
        t.end_migration("inst-ahead")


def test_next_attempt_refused_leaves_the_running_one(cluster):
    agents = AttemptAgents(dict(cluster))
    t = transport.AgentTransport(agents)
    inst = types.SimpleNamespace(uuid="inst-refused")
    mid = str(uuid.uuid4())
    mig = t._migration(inst, _md(mid), "src")
    try:
        t._prepare(mig, "a", _md(mid))
        del agents.managers["b"]                # b's agent is gone
        with pytest.raises(transport.AgentTransportError, match="b"):
            t.prepare_next(inst, "b", _md(mid))
        assert mig.ahead is None
        assert _states(cluster["src"], mid) == {0: "prepared"}
        assert _states(cluster["a"], mid) == {0: "prepared"}
    finally:
        t.end_migration("inst-refused")


def test_dropped_next_attempt_is_undone(cluster):
    agents = AttemptAgents(cluster)
    t = transport.AgentTransport(agents)
    inst = types.SimpleNamespace(uuid="inst-drop")
    mid = str(uuid.uuid4())
    mig = t._migration(inst, _md(mid), "src")
    try:
        t._prepare(mig, "a", _md(mid))
        t.prepare_next(inst, "b", _md(mid))
        ahead = mig.ahead
        t.drop_prepared("inst-drop")
        assert mig.ahead is None and not ahead.running
        assert _states(cluster["src"], mid) == {0: "prepared",
                                                1: "aborted"}
        assert mid not in cluster["b"].stores   # nothing kept on b
        assert "b" not in mig.hosts
        # The next attempt to b is prepared afresh.
        assert t._prepare(mig, "b", _md(mid)).number == 1
    finally:
        t.end_migration("inst-drop")


def test_old_agents_keep_the_safe_order(cluster):
    """Agents before RPC 1.4 abort every session of a migration: nothing
    may be prepared ahead of the stop then."""
    t = transport.AgentTransport(Agents(cluster))
    inst = types.SimpleNamespace(uuid="inst-old")
    mid = str(uuid.uuid4())
    mig = t._migration(inst, _md(mid), "src")
    try:
        t._prepare(mig, "a", _md(mid))
        t.prepare_next(inst, "b", _md(mid))
        assert mig.ahead is None
        assert (mid, 1) not in cluster["b"].sessions
    finally:
        t.end_migration("inst-old")


def test_agent_api_abort_of_one_attempt_needs_1_4():
    from nova_dcmigrate.agent import rpcapi

    sent = []

    class Client:
        def __init__(self, cap):
            self.cap = cap

        def can_send_version(self, v):
            return tuple(map(int, v.split("."))) <= self.cap

        def prepare(self, **kwargs):
            return types.SimpleNamespace(
                call=lambda ctxt, method, **kw: sent.append(
                    (kwargs["version"], method, kw)))

    api = rpcapi.AgentAPI.__new__(rpcapi.AgentAPI)
    api.client = Client((1, 3))
    assert not api.supports_attempt_abort()
    assert not attempts.can_prepare_ahead(api)
    api.client = Client((1, 4))
    assert attempts.can_prepare_ahead(api)
    api.abort("h", "m", "r")
    api.abort("h", "m", "r", attempt=2)
    assert sent == [("1.0", "abort", {"migration_id": "m", "reason": "r"}),
                    ("1.4", "abort", {"migration_id": "m", "reason": "r",
                                      "attempt": 2})]


def test_manager_abort_of_one_attempt(cluster):
    m = cluster["src"]
    mid = str(uuid.uuid4())
    secret = "s" * 64
    for n in (0, 1):
        m.prepare_source({}, mid, secret, "127.0.0.1", 1, attempt=n)
    try:
        from nova_dcmigrate.agent import exception as agent_exc
        with pytest.raises(agent_exc.InvalidRequest, match="bad attempt"):
            m.abort({}, mid, "x", attempt=-1)
        m.abort({}, mid, "x", attempt=0)
        assert _states(m, mid) == {0: "aborted", 1: "prepared"}
        m.abort({}, mid, "x")
        assert _states(m, mid) == {0: "aborted", 1: "aborted"}
    finally:
        m.cleanup({}, mid)


def test_block_migration_with_tls_is_refused():
    """A block migration's disks go in libvirt's NBD stream straight to
    the destination, outside the agents' TLS: with TLS asked for, they
    would cross in clear, so the agent transport refuses it (the driver
    at check_can_live_migrate_source, the domain wrapper as a backstop);
    without TLS it is carried (disks_uri tcp://, see above)."""
    lv = types.SimpleNamespace(VIR_MIGRATE_TLS=8,
                               VIR_MIGRATE_NON_SHARED_DISK=64,
                               VIR_MIGRATE_NON_SHARED_INC=128)
    t = transport.AgentTransport(object())
    assert t.unsupported_flags(1 | 64 | 8, lv) == [
        "VIR_MIGRATE_NON_SHARED_DISK"]
    assert t.unsupported_flags(1 | 128 | 8, lv) == [
        "VIR_MIGRATE_NON_SHARED_INC"]
    assert t.unsupported_flags(1 | 64, lv) == []
    assert t.unsupported_flags(1 | 8, lv) == []
    msg = str(transport.UnsupportedByAgents(flags=flags.describe(
        ["VIR_MIGRATE_NON_SHARED_DISK"])))
    assert "with VIR_MIGRATE_TLS" in msg and "in clear" in msg
    assert flags.is_block_migration(64, lv)
    assert not flags.is_block_migration(1 | 8, lv)

    seen = []
    dom = types.SimpleNamespace(
        migrateToURI3=lambda uri, params, flags: seen.append(flags))
    att = transport.AgentAttempt(
        0, transport.AgentEndpoint("b", "10.0.0.2", 16590),
        "/run/dcmigrate/x.0/migration.sock", [])
    d = transport._AgentDomain(dom, t, transport.AgentMigration(
        "m", "s" * 64, "src"), att, lv)
    with pytest.raises(transport.UnsupportedByAgents,
                       match="VIR_MIGRATE_NON_SHARED_DISK"):
        d.migrateToURI3("qemu+tcp://b/system", {"migrate_disks": ["vda"]},
                        1 | 64 | 8)
    assert seen == []
    d.migrateToURI3("qemu+tcp://b/system", {"migrate_disks": ["vda"]},
                    1 | 64)
    assert seen == [1 | 64]
