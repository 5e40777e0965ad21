"""dcmigrate-agent daemons on lab hosts, reached over real RabbitMQ RPC.

Local sockets: an agent given a mount namespace to join (``mount_ns``:
host -> a pid in it, e.g. the lab libvirtd's) runs there and uses
``/run/dcmigrate``, private to that host like the libvirtd's ``/run``;
otherwise (QMP labs, one filesystem for all hosts) each agent gets its own
``socket_dir`` in the lab workdir.  QEMU runs as root in the lab, so
``qemu_user``/``qemu_group`` are root.

TLS: with ``tls=True`` the lab makes a CA and one certificate per host
(:mod:`.certs`) and turns ``peer_tls`` on everywhere.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping, TYPE_CHECKING

from oslo_config import cfg
from oslo_log import log as logging
import oslo_messaging as messaging

from nova_dcmigrate.agent.rpcapi import AgentAPI
from nova_dcmigrate.lab.certs import LabCA
from nova_dcmigrate.lab.exception import LabError
from nova_dcmigrate.lab.rabbit import RabbitVhost
from nova_dcmigrate import rpc

if TYPE_CHECKING:
    from nova_dcmigrate.lab.topology import Lab

LOG = logging.getLogger(__name__)

PEER_PORT = 16590
START_TIMEOUT = 60.0


def libvirt_mount_ns(hosts: Mapping[str, Any]) -> dict[str, int]:
    """host -> the pid of its lab libvirtd, whose mount namespace (and
    ``/run``) the host's agent must share (``LabAgents(mount_ns=...)``).

    :param hosts: ``LibvirtHost`` by lab host name.
    """
    from nova_dcmigrate.lab import libvirt_host

    out = {}
    for name, host in hosts.items():
        pid = libvirt_host._read_pid(host.libvirtd_pidfile)
        if pid is None:
            raise LabError("no libvirtd pid for host %s" % name)
        out[name] = pid
    return out


class LabAgents:
    """One agent per lab host plus an RPC client for the controller."""

    def __init__(self, lab: Lab, hosts: list[str] | None = None,
                 extra_conf: str = "", *, tls: bool = False,
                 mount_ns: dict[str, int] | None = None) -> None:
        self.lab = lab
        self.hosts = list(hosts or lab.hosts)
        self.extra_conf = extra_conf
        #: Agent links use TLS (pass ``tls=self.tls`` to the prepares).
        self.tls = tls
        self.mount_ns = dict(mount_ns or {})
        self._ca: LabCA | None = None
        self.vhost = RabbitVhost(lab.run_id)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.conf_files: dict[str, Path] = {}
        self.transport: messaging.RPCTransport | None = None
        self.api: AgentAPI | None = None
        self.peer_port = PEER_PORT

    def start(self) -> LabAgents:
        self.vhost.create()
        url = self.vhost.url(self.lab.gateway_address)
        for name in self.hosts:
            self.start_agent(name, url)
        conf = cfg.ConfigOpts()
        conf([], project="nova-dcmigrate-lab")
        self.transport = rpc.get_transport(conf, url=url)
        self.api = AgentAPI(self.transport, timeout=30)
        for name in self.hosts:
            self.wait_ready(name)
        return self

    def socket_dir(self, name: str) -> str:
        """Where ``name``'s agent keeps its migration sockets."""
        if name in self.mount_ns:
            return "/run/dcmigrate"
        return str(Path(self.lab.workdir) / ("s-%s" % name))

    def _tls_conf(self, name: str) -> str:
        if not self.tls:
            return ""
        if self._ca is None:
            self._ca = LabCA(Path(self.lab.workdir) / "pki")
        host = self.lab.hosts[name]
        return self._ca.issue(name, [host.address]).conf_lines()

    def config_for(self, name: str, url: str) -> Path:
        host = self.lab.hosts[name]
        path = Path(self.lab.workdir) / ("agent-%s.conf" % name)
        path.write_text(
            "[DEFAULT]\n"
            "transport_url = %(url)s\n"
            "debug = true\n"
            "log_file = %(log)s\n"
            "[dcmigrate_agent]\n"
            "host = %(name)s\n"
            "peer_listen_address = %(addr)s\n"
            "peer_port = %(port)d\n"
            "socket_dir = %(sockets)s\n"
            "qemu_user = root\n"
            "qemu_group = root\n"
            "%(tls)s"
            "%(extra)s\n" % {
                "url": url, "name": name, "addr": host.address,
                "port": self.peer_port, "extra": self.extra_conf,
                "sockets": self.socket_dir(name),
                "tls": self._tls_conf(name),
                "log": Path(self.lab.workdir) / ("agent-%s.log" % name)})
        return path

    def start_agent(self, name: str, url: str | None = None) -> None:
        url = url or self.vhost.url(self.lab.gateway_address)
        path = self.config_for(name, url)
        self.conf_files[name] = path
        argv = [sys.executable, "-m", "nova_dcmigrate.cmd.agent",
                "--config-file", str(path)]
        if name in self.mount_ns:
            argv = ["nsenter", "-t", str(self.mount_ns[name]), "-m"] + argv
        self.procs[name] = self.lab.spawn(
            name, argv,
            log_name="agent-%s.out" % name)

    def wait_ready(self, name: str, timeout: float = START_TIMEOUT) -> None:
        assert self.api is not None
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise LabError("agent on %s exited with %s; see %s"
                               % (name, proc.returncode,
                                  Path(self.lab.workdir) /
                                  ("agent-%s.log" % name)))
            try:
                self.api.client.prepare(server=name, timeout=3).call(
                    {}, "ping")
                return
            except messaging.MessagingTimeout as err:
                last = err
        raise LabError("agent on %s did not answer within %.0f s: %s"
                       % (name, timeout, last))

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def log_path(self, name: str) -> Path:
        return Path(self.lab.workdir) / ("agent-%s.log" % name)

    def stop(self) -> None:
        for name, proc in list(self.procs.items()):
            if proc.poll() is None:
                proc.terminate()
        for name, proc in list(self.procs.items()):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.procs.clear()
        if self.transport is not None:
            self.transport.cleanup()
            self.transport = None
        self.vhost.delete()

    def __enter__(self) -> LabAgents:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
