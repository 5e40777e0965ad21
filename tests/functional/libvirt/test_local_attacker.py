"""An unprivileged local process against the agents' and QEMU's ends.

Three libvirt lab hosts; agents with mutual TLS 1.3 between them (the lab
makes its CA and host certificates with openssl).  While a real migration
and a redirect run, a process as ``nobody`` (uid/gid 65534, no groups,
no capabilities: ``setpriv``) in each host's network *and* mount
namespace keeps trying to connect to everything there: every attempt
directory it can see in ``/run/dcmigrate`` (the agents' and the
destination QEMU's UNIX sockets) and every listening TCP socket of the
host (the agent's peer port; libvirtd's own port excluded, it is not
ours).  It sends junk wherever it gets in.

Before this change the source agent listened on 127.0.0.1:P and the
destination QEMU on 127.0.0.1:P: such a process took the source agent's
port in 2 of 2 runs and both migrations failed.  Now it must be refused
on every UNIX socket, reach no loopback port, and the migrations must
complete with the guest RAM byte-for-byte identical.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from tests.functional.libvirt.conftest import LabRun
from tests.functional.libvirt.conftest import LIBVIRT_LAB

pytestmark = LIBVIRT_LAB

libvirt = pytest.importorskip("libvirt",
                              reason="libvirt-python is not installed")

from nova_dcmigrate.agent import protocol  # noqa: E402
from nova_dcmigrate.lab import libvirt_host  # noqa: E402

LAB_HOSTS = ("src", "a", "b")
LAB_LINK = "300mbit"
#: The agents' peer links use mutual TLS (conftest's ``agents``).
AGENT_TLS = True
NOBODY = "65534"
LIBVIRTD_PORT = 16509

#: Runs as nobody until SIGTERM, then prints what it achieved (JSON).
ATTACKER = r"""
import errno, json, os, signal, socket, sys, time
res = {"rounds": 0, "unix_tries": 0, "unix_connected": [], "unix_errors": {},
       "dirs_seen": [], "tcp_reached": [], "tcp_listeners": []}
skip = {int(p) for p in sys.argv[1].split(",")}
JUNK = b"QEVM\x00\x00\x00\x03" + b"\xff" * 4096
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))

def listeners():
    out = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(name).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] != "0A":       # LISTEN
                continue
            addr, port = f[1].split(":")
            port = int(port, 16)
            if len(addr) == 8:
                ip = socket.inet_ntop(socket.AF_INET,
                                      bytes.fromhex(addr)[::-1])
            else:
                continue
            out.add((ip, port))
    return out

while not stop:
    res["rounds"] += 1
    try:
        names = os.listdir("/run/dcmigrate")
    except OSError:
        names = []
    for n in names:
        if n not in res["dirs_seen"]:
            res["dirs_seen"].append(n)
        path = "/run/dcmigrate/%s/migration.sock" % n
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(1)
        res["unix_tries"] += 1
        try:
            s.connect(path)
            res["unix_connected"].append(path)
            s.sendall(JUNK)
        except OSError as e:
            k = errno.errorcode.get(e.errno, str(e.errno))
            res["unix_errors"][k] = res["unix_errors"].get(k, 0) + 1
        finally:
            s.close()
    for ip, port in listeners():
        if [ip, port] not in res["tcp_listeners"]:
            res["tcp_listeners"].append([ip, port])
        if port in skip:
            continue
        try:
            s = socket.create_connection(
                ("127.0.0.1" if ip == "0.0.0.0" else ip, port), timeout=0.5)
        except OSError:
            continue
        try:
            if [ip, port] not in res["tcp_reached"]:
                res["tcp_reached"].append([ip, port])
            s.sendall(JUNK)
        except OSError:
            pass
        finally:
            s.close()
    time.sleep(0.01)
print(json.dumps(res))
"""


class Attacker:
    """``nobody`` in one host's network and mount namespace."""

    def __init__(self, lab, host) -> None:
        pid = libvirt_host._read_pid(host.libvirtd_pidfile)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.hosts[host.host].netns,
             "nsenter", "-t", str(pid), "-m",
             "setpriv", "--reuid=" + NOBODY, "--regid=" + NOBODY,
             "--clear-groups", "/usr/bin/python3", "-c", ATTACKER,
             str(LIBVIRTD_PORT)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True)

    def stop(self) -> dict:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=30)
        assert out.strip(), "attacker failed: %s" % err
        return json.loads(out)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Run(LabRun):
    """A TLS migration with a ``nobody`` attacker on every host."""

    def __init__(self, lab, hosts, agents, image) -> None:
        super().__init__(lab, hosts, agents, image, tls=True)
        self.attackers = {n: Attacker(lab, h) for n, h in hosts.items()}
        self.results: dict[str, dict] = {}

    def finished(self) -> None:
        self.results = {n: a.stop() for n, a in self.attackers.items()}

    def link_of(self, host: str, attempt: int) -> dict:
        st = self.agents.api.get_status(host, self.m.migration_id)
        return [a for a in st["attempts"]
                if a["attempt"] == attempt][0]["link"]

    def check_attackers(self, busy_hosts: tuple[str, ...]) -> None:
        peer = self.agents.peer_port
        # One line per host for the record (pytest -s shows it).
        for name, res in sorted(self.results.items()):
            print("attacker on %s: %d rounds, %d UNIX connects (%s), "
                  "connected %d; attempt dirs seen %s; TCP reached %s"
                  % (name, res["rounds"], res["unix_tries"],
                     res["unix_errors"], len(res["unix_connected"]),
                     res["dirs_seen"], res["tcp_reached"]))
        for name, res in self.results.items():
            assert res["rounds"] > 10, (name, res)
            # Never into a UNIX socket of an agent or a QEMU ...
            assert res["unix_connected"] == [], (name, res)
            assert set(res["unix_errors"]) <= {"EACCES", "ENOENT"}, res
            # ... and no loopback port to race for: the only TCP socket
            # it reached is the agent's authenticated peer port.
            assert all(port == peer for _ip, port in res["tcp_reached"]), \
                (name, res["tcp_reached"])
            assert not [lst for lst in res["tcp_listeners"]
                        if lst[0].startswith("127.")], res["tcp_listeners"]
        for name in busy_hosts:
            res = self.results[name]
            # It raced during the migration: it saw the attempt's
            # directory and was refused there.
            assert any(d.startswith(self.m.migration_id)
                       for d in res["dirs_seen"]), (name, res)
            assert res["unix_errors"].get("EACCES", 0) > 0, (name, res)

    def close(self) -> None:
        for a in self.attackers.values():
            a.kill()
        super().close()


LAB_RUN = Run


@pytest.mark.timeout(300)
def test_attacker_refused_during_tls_migration(run, agents):
    r = run()
    before = agents.api.peer_stats("a")["rejected"]
    r.m.start("a")
    assert r.finish_and_check() == "a"
    r.check_attackers(("src", "a"))
    assert r.link_of("a", 0) == {"protocol": protocol.VERSION,
                                 "tls": "TLSv1.3"}
    # The attacker's junk on the peer port was dropped, not served.
    assert agents.api.peer_stats("a")["rejected"] > before
    # Nothing left in the socket directories.
    for h in ("src", "a"):
        assert _attempt_dirs(r, h) == []


@pytest.mark.timeout(400)
def test_attacker_refused_during_tls_redirect(run, hosts):
    r = run()
    r.m.start("a")
    r.wait_progress(40e6)
    r.m.redirect("b")
    assert r.finish_and_check() == "b"
    r.check_attackers(("src", "a", "b"))
    st = r.m.status()
    assert st.bytes_relayed.get("a", 0) > 0
    assert st.pages_deduplicated > 0
    assert r.link_of("b", 1) == {"protocol": protocol.VERSION,
                                 "tls": "TLSv1.3"}
    for h in ("src", "a", "b"):
        assert _attempt_dirs(r, h) == []


def _attempt_dirs(r: Run, host: str) -> list[str]:
    """Attempt directories left in the host's /run/dcmigrate (after the
    sessions ended: the old destination's after the redirect)."""
    pid = libvirt_host._read_pid(r.hosts[host].libvirtd_pidfile)
    out = subprocess.run(
        ["nsenter", "-t", str(pid), "-m", "ls", "-A", "/run/dcmigrate"],
        capture_output=True, text=True, check=True).stdout.split()
    deadline = time.monotonic() + 10
    while out and time.monotonic() < deadline:
        time.sleep(0.2)
        out = subprocess.run(
            ["nsenter", "-t", str(pid), "-m", "ls", "-A", "/run/dcmigrate"],
            capture_output=True, text=True, check=True).stdout.split()
    return out
