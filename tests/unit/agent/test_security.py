"""Local sockets, TLS, the peer port's limits and the RPC secret check.

Real agents on loopback (tests/unit/agent/harness.py), real UNIX sockets
and directories, real TLS with certificates made by ``openssl``; an
unprivileged process is a real ``setpriv`` child when running as root.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from nova_dcmigrate.agent import exception
from nova_dcmigrate.agent import local_socket
from nova_dcmigrate.agent import protocol
from nova_dcmigrate.agent.peer_listener import LogLimiter
from nova_dcmigrate.agent.session import SessionState
from nova_dcmigrate.lab.certs import LabCA
from tests.unit.agent.harness import AgentPair
from tests.unit.agent.harness import FakeDestQemu
from tests.unit.agent.harness import FakeSourceQemu
from tests.unit.agent.harness import socket_dir
from tests.unit.agent.test_session import big_stream
from tests.unit.agent.test_session import wait_state

ROOT = os.geteuid() == 0
NOBODY = 65534


def _as_nobody_connect(path: str) -> str:
    """Try to connect to ``path`` as uid/gid 65534; the errno name."""
    code = ("import socket,sys\n"
            "s=socket.socket(socket.AF_UNIX)\n"
            "try:\n s.connect(sys.argv[1]); print('CONNECTED')\n"
            "except OSError as e:\n import errno; "
            "print(errno.errorcode.get(e.errno, e.errno))\n")
    out = subprocess.run(
        ["setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY,
         "--clear-groups", sys.executable, "-c", code, path],
        capture_output=True, text=True, timeout=30)
    return out.stdout.strip() or out.stderr.strip()


# -- local sockets ------------------------------------------------------------
def test_attempt_dirs_and_socket_modes():
    base = socket_dir()
    mid = str(uuid.uuid4())
    path = local_socket.make_attempt_dir(base, mid, 2, os.getuid(),
                                         os.getgid())
    assert path == os.path.join(base, "%s.2" % mid)
    st = os.lstat(path)
    assert stat.S_IMODE(st.st_mode) == 0o700
    sock = local_socket.listen(os.path.join(path, local_socket.SOCKET_NAME))
    try:
        mode = os.lstat(os.path.join(path, local_socket.SOCKET_NAME)).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    finally:
        sock.close()
    # A leftover is replaced, never reused.
    assert local_socket.make_attempt_dir(base, mid, 2, os.getuid(),
                                         os.getgid()) == path
    assert os.listdir(path) == []
    assert local_socket.clear_stale(base) == 1
    assert os.listdir(base) == []


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757])
def test_socket_dir_writable_by_others_refused(mode):
    base = socket_dir()
    os.chmod(base, mode)
    with pytest.raises(exception.LocalSocketError, match="writable"):
        local_socket.ensure_base(base)


def test_socket_dir_symlink_refused():
    target = socket_dir()
    link = target + "-link"
    os.symlink(target, link)
    try:
        with pytest.raises(exception.LocalSocketError, match="symlink"):
            local_socket.ensure_base(link)
    finally:
        os.unlink(link)


def test_socket_path_too_long_refused():
    base = socket_dir() + "/" + "d" * 80
    os.makedirs(base, 0o755)
    with pytest.raises(exception.LocalSocketError, match="107"):
        local_socket.make_attempt_dir(base, str(uuid.uuid4()), 0, 0, 0)


def test_peer_uid_check():
    a, b = socket.socketpair()
    with a, b:
        assert local_socket.peer_uid(a) == os.geteuid()
        local_socket.check_peer(a, {os.geteuid()}, "m", "p")
        with pytest.raises(exception.LocalSocketError, match="not allowed"):
            local_socket.check_peer(a, {os.geteuid() + 4242}, "m", "p")


@pytest.fixture
def pair():
    p = AgentPair(chunk_size=16384, socket_buffer=65536)
    yield p
    p.stop()


@pytest.mark.skipif(not ROOT or not shutil.which("setpriv"),
                    reason="needs root and setpriv for an unprivileged "
                           "process")
def test_unprivileged_process_cannot_reach_either_end(pair):
    s = big_stream()
    dq = FakeDestQemu()
    src_path = pair.prepare(dq)
    dst_path = dq.path
    # Both ends exist; nobody gets in (the directories are 0700).
    for path in (src_path, dst_path):
        assert os.path.exists(path)
        assert _as_nobody_connect(path) == "EACCES"
    sq = FakeSourceQemu(src_path, s.data).start()
    src, dst = pair.session("src"), pair.session("dst")
    assert wait_state(src, {SessionState.COMPLETED, SessionState.FAILED}) \
        == SessionState.COMPLETED, src.error
    sq.thread.join(5)
    assert bytes(dq.received) == s.data
    # Nothing left behind: the attempt's directories are gone (removed by
    # the session's thread just after it reports its final state).
    wait_state(dst, {SessionState.COMPLETED, SessionState.FAILED})
    for path in (src_path, dst_path):
        assert _gone(os.path.dirname(path)), path


def _gone(path: str, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_source_refuses_a_local_peer_of_another_uid():
    p = AgentPair(chunk_size=16384, socket_buffer=65536)
    try:
        dq = FakeDestQemu()
        src_path = p.prepare(dq)
        src = p.session("src")
        # Pretend only an unused uid may connect: our own is refused.
        src._allowed = {os.geteuid() + 4242}
        FakeSourceQemu(src_path, big_stream().data).start()
        assert wait_state(src, {SessionState.FAILED}) == SessionState.FAILED
        assert "not allowed" in src.error
        assert dq.received == b""
    finally:
        p.stop()


def test_session_end_removes_socket_dirs(pair):
    dq = FakeDestQemu()
    src_path = pair.prepare(dq)
    assert os.path.exists(src_path) and os.path.exists(dq.path)
    pair.src.cleanup(None, pair.migration_id)
    pair.dst.cleanup(None, pair.migration_id)
    assert not os.path.exists(os.path.dirname(src_path))
    assert not os.path.exists(os.path.dirname(dq.path))


# -- secret -------------------------------------------------------------------
def test_second_prepare_with_another_secret_refused(pair):
    mid = pair.migration_id
    pair.dst.prepare_destination(None, mid, pair.secret, attempt=0)
    with pytest.raises(exception.SecretMismatch) as ei:
        pair.dst.prepare_destination(None, mid, "y" * 64, attempt=1)
    assert ei.value.kwargs["migration_id"] == mid
    # The first attempt is untouched.
    assert pair.session("dst").state == SessionState.PREPARED
    pair.src.prepare_source(None, mid, pair.secret, "127.0.0.1",
                            pair.dst.listener.port, 0)
    with pytest.raises(exception.SecretMismatch):
        pair.src.prepare_source(None, mid, "z" * 64, "127.0.0.1",
                                pair.dst.listener.port, 1)
    # The same secret for a new attempt is fine.
    pair.dst.prepare_destination(None, mid, pair.secret, attempt=1)


# -- peer port limits ---------------------------------------------------------
def test_connection_cap_and_release():
    p = AgentPair(max_peer_connections=2, handshake_timeout=1.0)
    try:
        port = p.dst.listener.port
        idle = [socket.create_connection(("127.0.0.1", port))
                for _ in range(2)]
        time.sleep(0.2)
        extra = socket.create_connection(("127.0.0.1", port))
        extra.settimeout(5)
        assert extra.recv(1) == b""        # closed at once
        extra.close()
        assert p.dst.listener.over_limit == 1
        # Stalled handshakes time out and free their slots.
        deadline = time.monotonic() + 10
        while p.dst.listener.open and time.monotonic() < deadline:
            time.sleep(0.05)
        assert p.dst.listener.open == 0
        for s in idle:
            s.close()
        # A real migration gets through afterwards.
        s = big_stream(npages=50)
        dq = FakeDestQemu()
        sq = FakeSourceQemu(p.prepare(dq), s.data).start()
        assert wait_state(p.session("src"), {SessionState.COMPLETED,
                                             SessionState.FAILED}) \
            == SessionState.COMPLETED
        sq.thread.join(5)
        assert bytes(dq.received) == s.data
    finally:
        p.stop()


def test_log_limiter():
    now = [0.0]
    lim = LogLimiter(burst=3, interval=10.0, clock=lambda: now[0])
    assert [lim.allow() for _ in range(5)] == [
        (True, 0), (True, 0), (True, 0), (False, 0), (False, 0)]
    now[0] = 10.0
    assert lim.allow() == (True, 2)      # reports what it swallowed
    assert lim.allow() == (True, 0)


# -- TLS ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def certs():
    if not shutil.which("openssl"):
        pytest.skip("openssl not installed")
    d = Path(tempfile.mkdtemp(prefix="dcm-ca-"))
    ca = LabCA(d)
    other = LabCA(d / "other", "rogue-ca")
    yield {"good": ca.issue("agent", ["127.0.0.1"]),
           "wrongname": ca.issue("far", ["10.9.9.9"]),
           "rogue": other.issue("rogue", ["127.0.0.1"])}
    shutil.rmtree(d, ignore_errors=True)


def _tls(cert) -> dict:
    return {"peer_tls": True, "peer_tls_ca_file": str(cert.ca_file),
            "peer_tls_cert_file": str(cert.cert_file),
            "peer_tls_key_file": str(cert.key_file)}


def test_tls_migration_carries_stream_without_frame_macs(certs):
    p = AgentPair(chunk_size=16384, socket_buffer=65536,
                  **_tls(certs["good"]))
    try:
        assert p.dst.ping(None)["tls"] is True
        s = big_stream()
        dq = FakeDestQemu()
        p.dst.prepare_destination(None, p.migration_id, p.secret,
                                  attempt=0, tls=True)
        dq.listen(p.dst.sessions[(p.migration_id, 0)].socket_path)
        path = p.src.prepare_source(None, p.migration_id, p.secret,
                                    "127.0.0.1", p.dst.listener.port, 0,
                                    tls=True)["socket"]
        sq = FakeSourceQemu(path, s.data).start()
        src, dst = p.session("src"), p.session("dst")
        assert wait_state(src, {SessionState.COMPLETED,
                                SessionState.FAILED}) \
            == SessionState.COMPLETED, src.error
        sq.thread.join(5)
        assert bytes(dq.received) == s.data
        assert src._conn is not None and src._conn.tls
        assert src._conn.tls_version == "TLSv1.3"
        st = p.dst.get_status(None, p.migration_id)["attempts"][0]
        assert st["link"] == {"protocol": protocol.VERSION, "tls": "TLSv1.3"}
        assert src._conn.mac_len == 0
        store = p.dst.stores[p.migration_id]
        for block, pages in s.final.items():
            for page, data in pages.items():
                assert bytes(store.page(block, page)) == data
        assert dst.state == SessionState.COMPLETED
    finally:
        p.stop()


@pytest.mark.parametrize("client", ["rogue", "plain"])
def test_tls_listener_refuses_untrusted_or_plain_peers(certs, client):
    acc = AgentPair(chunk_size=16384, **_tls(certs["good"]))
    con = AgentPair(chunk_size=16384, **(
        _tls(certs["rogue"]) if client == "rogue" else {}))
    try:
        dq = FakeDestQemu()
        acc.dst.prepare_destination(None, acc.migration_id, acc.secret,
                                    attempt=0)
        dq.listen(acc.dst.sessions[(acc.migration_id, 0)].socket_path)
        path = con.src.prepare_source(None, acc.migration_id, acc.secret,
                                      "127.0.0.1", acc.dst.listener.port,
                                      0)["socket"]
        FakeSourceQemu(path, big_stream(npages=20).data).start()
        src = con.src.sessions[(acc.migration_id, 0)]
        assert wait_state(src, {SessionState.FAILED}, 20) \
            == SessionState.FAILED
        assert dq.received == b""
        # The connector may give up (its own TLS check fails too) before
        # the acceptor's listener has counted the rejection.
        deadline = time.monotonic() + 10
        while acc.dst.listener.rejected < 1 and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        assert acc.dst.listener.rejected >= 1
        assert acc.dst.sessions[(acc.migration_id, 0)].state \
            == SessionState.PREPARED
    finally:
        acc.stop()
        con.stop()


def test_tls_connector_checks_the_acceptor_name(certs):
    acc = AgentPair(chunk_size=16384, **_tls(certs["wrongname"]))
    con = AgentPair(chunk_size=16384, **_tls(certs["good"]))
    try:
        acc.dst.prepare_destination(None, acc.migration_id, acc.secret,
                                    attempt=0)
        path = con.src.prepare_source(None, acc.migration_id, acc.secret,
                                      "127.0.0.1", acc.dst.listener.port,
                                      0)["socket"]
        FakeSourceQemu(path, big_stream(npages=20).data).start()
        src = con.src.sessions[(acc.migration_id, 0)]
        assert wait_state(src, {SessionState.FAILED}, 20) \
            == SessionState.FAILED
        assert "TLS" in src.error and "127.0.0.1" in src.error
    finally:
        acc.stop()
        con.stop()


def test_tls_required_but_off_refused(pair):
    with pytest.raises(exception.TLSConfigError, match="peer_tls is off"):
        pair.dst.prepare_destination(None, pair.migration_id, pair.secret,
                                     attempt=0, tls=True)
    with pytest.raises(exception.TLSConfigError):
        pair.src.prepare_source(None, pair.migration_id, pair.secret,
                                "127.0.0.1", 1, 0, tls=True)
    assert pair.src.ping(None)["tls"] is False


def test_tls_bad_files_refused_at_start(tmp_path):
    from tests.unit.agent.harness import make_conf
    from nova_dcmigrate.agent.manager import AgentManager
    conf = make_conf(peer_tls=True,
                     peer_tls_ca_file=str(tmp_path / "missing.pem"))
    with pytest.raises(exception.TLSConfigError, match="missing.pem"):
        AgentManager(conf.dcmigrate_agent, "x")
