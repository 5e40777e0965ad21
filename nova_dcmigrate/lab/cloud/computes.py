"""Compute hosts of the lab cloud: libvirtd + nova-compute + agent.

Each lab host runs its libvirtd in a private mount and UTS namespace
(``lab/libvirt_host.py``); nova-compute and dcmigrate-agent are started
in that same namespace set with ``nsenter``, so that they use
``qemu:///system`` and die with the host (``LibvirtHost.stop`` kills every
process of the mount namespace, including nova's privsep daemon).
"""

from __future__ import annotations

from pathlib import Path
import shlex
import sys

from oslo_log import log as logging

from nova_dcmigrate.lab.cloud import control
from nova_dcmigrate.lab.cloud import devstack
from nova_dcmigrate.lab.cloud import gate
from nova_dcmigrate.lab.cloud import procs
from nova_dcmigrate.lab.libvirt_host import LibvirtHost

LOG = logging.getLogger(__name__)


def nova_host(lab_host: str) -> str:
    """Nova's service host name of a lab host (``--host``, hypervisors)."""
    return f"host{lab_host}"


class Compute:
    """One compute host; configure with :meth:`configure`, then start."""

    def __init__(self, plane: control.ControlPlane, libvirt: LibvirtHost,
                 repo: Path, processes: procs.Processes) -> None:
        self.plane = plane
        self.libvirt = libvirt
        self.repo = repo
        self.procs = processes
        self.name = nova_host(libvirt.host)
        self.dir = plane.dir / "hosts" / libvirt.host
        self.nova_conf = self.dir / "nova-cpu.conf"
        self.agent_conf = self.dir / "dcmigrate-agent.conf"
        self.run_dir = self.dir / "run"

    def configure(self, instances_path: Path) -> None:
        for sub in ("state", "lock"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        sections = self.plane.nova_sections()
        del sections["database"], sections["api_database"]
        sections["DEFAULT"].update({
            "host": self.name, "my_ip": self.libvirt.address,
            "state_path": self.dir / "state",
            "instances_path": instances_path,
            "compute_driver": "libvirt.LibvirtDriver"})
        sections["oslo_concurrency"] = {"lock_path": self.dir / "lock"}
        sections["libvirt"] = {
            "virt_type": gate.DEVSTACK_LOCALRC["LIBVIRT_TYPE"],
            "connection_uri": "qemu:///system",
            "cpu_mode": "custom", "cpu_models": "qemu64",
            "live_migration_inbound_addr": self.libvirt.address,
            "live_migration_scheme": "tcp"}
        sections["nova_sys_admin"] = {"helper_command": (
            f"{sys.prefix}/bin/privsep-helper --config-file "
            f"{self.nova_conf}")}
        sections["dcmigrate_compute"] = {"agent_check_interval": 10}
        control.write_ini(self.nova_conf, sections)
        # Our parts: the devstack plugin's own functions, with the gate
        # job's variables.
        localrc = {k: gate.DEVSTACK_LOCALRC[k] for k in gate.COMPUTE_LOCALRC}
        devstack.run_functions(self.repo, [
            "configure_dcmigrate", "start_dcmigrate"], {
            **localrc,
            "CLOUD_ENABLED_SERVICES": "dcmigrate-agent",
            "CLOUD_TRANSPORT_URL": self.plane.transport_url,
            "CLOUD_RUN_DIR": str(self.run_dir),
            "NOVA_CPU_CONF": str(self.nova_conf),
            "DCMIGRATE_CONF_DIR": str(self.dir),
            "DCMIGRATE_AGENT_CONF": str(self.agent_conf),
            "DCMIGRATE_HOST": self.name,
            "HOST_IP": self.libvirt.address,
        }, self.plane.setup_log)
        control.write_ini(self.agent_conf, {"DEFAULT": {
            "log_file": self.plane.log_dir / f"agent-{self.name}.log"}})

    def _nsenter(self, name: str, argv: list[str]) -> None:
        pid = self.libvirt.libvirtd_pidfile.read_text().strip()
        self.procs.start(name, ["nsenter", "-t", pid, "-m", "-u", "-n",
                                *argv])

    def start(self) -> None:
        agent_cmd = (self.run_dir / "dcmigrate-agent.cmd").read_text()
        self._nsenter(f"agent-{self.name}", shlex.split(agent_cmd))
        self._nsenter(f"nova-compute-{self.name}", [
            f"{sys.prefix}/bin/nova-compute", "--config-file",
            str(self.nova_conf), "--log-file",
            str(self.plane.log_dir / f"nova-compute-{self.name}-app.log")])
