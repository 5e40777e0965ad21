"""Bring the lab cloud up and down (``dcmigrate-lab cloud``).

One process owns a cloud: it builds it, writes ``<workdir>/openrc`` and
``/run/nova-dcmigrate/cloud.json``, and tears everything down when it
ends, by exception, SIGTERM or Ctrl-C (computes first, then the lab hosts
with their libvirtd and QEMUs, then the control plane, the RabbitMQ vhost,
the namespaces and the workdir).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import shlex
import shutil
import time
from typing import Any

from oslo_log import log as logging

from nova_dcmigrate.lab.cloud import computes
from nova_dcmigrate.lab.cloud import control
from nova_dcmigrate.lab.cloud import devstack
from nova_dcmigrate.lab.cloud import procs
from nova_dcmigrate.lab import image
from nova_dcmigrate.lab import libvirt_host
from nova_dcmigrate.lab.topology import Lab

LOG = logging.getLogger(__name__)

STATE_FILE = Path("/run/nova-dcmigrate/cloud.json")
HOSTS = ("a", "b", "c")
#: Each host's link (both directions): slow enough that a live migration
#: of the redirect tests' guest lasts long enough to redirect it.
DEFAULT_RATE = "100mbit"
TRAIT = "CUSTOM_DCMIGRATE_AGENT"
API_PORT = 8790
#: Guest images: (name, flavor RAM MiB, kernel command line).
IMAGES = {
    "lab-guest": "console=ttyS0 dirty_mib=32 dirty_rate=8",
    # 320 MiB of non-zero pages (the dirtier fills its region at once),
    # re-dirtied slowly: at 100 Mbit/s a live migration of lab.small
    # takes ~30 s, time to redirect it twice.  (64 MiB at 8 MiB/s took
    # 7 s: zero pages cost nothing.)
    "lab-guest-busy": "console=ttyS0 dirty_mib=320 dirty_rate=4",
}
FLAVORS = {"42": ("lab.tiny", 256), "43": ("lab.small", 512)}


class Cloud:
    def __init__(self, repo: Path, rate: str = DEFAULT_RATE,
                 keep_workdir: bool = False, api: bool = True,
                 neutron_stub: bool = False) -> None:
        self.repo = repo.resolve()
        #: The read-only Neutron stand-in instead of neutron-server.
        self.neutron_stub = neutron_stub
        #: Run dcmigrate-api (the redirect REST API) on the controller.
        self.api = api
        self.rate = rate
        self.keep_workdir = keep_workdir
        self.lab: Lab | None = None
        self.plane: control.ControlPlane | None = None
        self.procs: procs.Processes | None = None
        self.compute_procs: procs.Processes | None = None
        self.computes: list[computes.Compute] = []
        self.info: dict[str, Any] = {}
        # pyroute2 forks to enter namespaces; a forked child unwinding
        # through up()'s caller must never tear the cloud down.
        self._owner_pid = os.getpid()
        self.timings: dict[str, float] = {}

    # -- up ------------------------------------------------------------

    def _step(self, name: str, started: float) -> float:
        now = time.monotonic()
        self.timings[name] = round(now - started, 1)
        LOG.info("cloud: %s in %.1f s", name, now - started)
        return now

    def up(self) -> dict[str, Any]:
        t0 = t = time.monotonic()
        guest = image.build_guest_image()
        # The workdir holds the control plane's data and logs: removed
        # by down() after those processes stopped, not by the lab.
        self.lab = Lab({h: self.rate for h in HOSTS}, keep_workdir=True)
        work = Path(self.lab.workdir)
        os.chmod(work, 0o755)
        (work / "log").mkdir()
        self.procs = procs.Processes(work / "log", self._save_state)
        self.compute_procs = procs.Processes(work / "log",
                                             self._save_state)
        self.plane = control.ControlPlane(work, self.lab.gateway_address,
                                          self.lab.run_id, self.procs,
                                          neutron_stub=self.neutron_stub)
        self._save_state()
        plane = self.plane
        plane.start_databases()
        t = self._step("databases and bus", t)
        plane.start_keystone()
        t = self._step("keystone", t)
        plane.start_placement_glance_neutron()
        plane.configure_nova()
        self._configure_controller()
        plane.start_nova()
        if self.api:
            self._start_api()
        t = self._step("placement, glance, nova", t)
        instances = work / "instances"
        instances.mkdir()
        hosts = libvirt_host.start_libvirt_hosts(
            self.lab, HOSTS, shared_filesystems=[str(instances)])
        for host in HOSTS:
            compute = computes.Compute(plane, hosts[host], self.repo,
                                       self.compute_procs)
            compute.configure(instances)
            compute.start()
            self.computes.append(compute)
        self._wait_computes()
        t = self._step("computes", t)
        self._images(guest)
        t = self._step("images and flavors", t)
        self.info = {
            "pid": os.getpid(), "workdir": str(work),
            "openrc": str(self._write_openrc()),
            "hosts": {computes.nova_host(h): hosts[h].address
                      for h in HOSTS},
            "bringup_seconds": round(time.monotonic() - t0, 1),
            "timings": self.timings,
            "images": self.images, "flavors": list(FLAVORS),
            "api": self.api,
        }
        self._save_state()
        LOG.info("cloud up in %.1f s: openrc %s", time.monotonic() - t0,
                 self.info["openrc"])
        return self.info

    def _controller_env(self) -> dict[str, str]:
        assert self.plane is not None
        plane = self.plane
        env = plane.admin_env()
        env.update({
            "CLOUD_ENABLED_SERVICES": "dcmigrate-scheduler" +
                                      (",dcmigrate-api" if self.api else ""),
            "CLOUD_TRANSPORT_URL": plane.transport_url,
            "CLOUD_RUN_DIR": str(plane.dir / "run"),
            "NOVA_CONF": str(plane.nova_conf),
            "DCMIGRATE_CONF_DIR": str(plane.etc / "nova-dcmigrate"),
            "DCMIGRATE_API_CONF": str(
                plane.etc / "nova-dcmigrate" / "dcmigrate-api.conf"),
            "DCMIGRATE_STATE_DIR": str(plane.dir / "dcmigrate-api"),
            "DCMIGRATE_API_PORT": str(API_PORT),
            "SERVICE_HOST": plane.address,
            "SERVICE_LISTEN_ADDRESS": plane.address,
            "REGION_NAME": "RegionOne",
            "KEYSTONE_SERVICE_URI": plane.url("keystone"),
            "SERVICE_PASSWORD": plane.password,
            "SERVICE_PROJECT_NAME": "service",
            "SERVICE_DOMAIN_NAME": "Default",
        })
        return env

    def _configure_controller(self) -> None:
        """The scheduler weigher and dcmigrate-api: the devstack plugin."""
        assert self.plane is not None
        devstack.run_functions(self.repo, [
            "configure_dcmigrate", "start_dcmigrate"],
            self._controller_env(), self.plane.setup_log)

    def _start_api(self) -> None:
        assert self.plane is not None and self.procs is not None
        plane, processes = self.plane, self.procs
        conf = plane.etc / "nova-dcmigrate" / "dcmigrate-api.conf"
        control.write_ini(conf, {"DEFAULT": {
            "log_file": plane.log_dir / "dcmigrate-api-app.log"}})
        cmd = (plane.dir / "run" / "dcmigrate-api.cmd").read_text()
        self.procs.start("dcmigrate-api", shlex.split(cmd))
        url = f"http://{plane.address}:{API_PORT}/"
        procs.wait_for("dcmigrate-api", lambda: control.http_ok(url), 120,
                       plane.log_dir / "dcmigrate-api.log",
                       lambda: processes.check("dcmigrate-api"))

    def connection(self) -> Any:
        """An admin openstacksdk connection (imported here: only the
        cloud's venv has openstacksdk)."""
        import openstack
        assert self.plane is not None
        env = self.plane.admin_env()
        return openstack.connect(
            auth_url=env["OS_AUTH_URL"], username="admin",
            password=env["OS_PASSWORD"], project_name="admin",
            user_domain_id="default", project_domain_id="default",
            region_name="RegionOne", interface="public")

    def _wait_computes(self) -> None:
        assert self.plane is not None and self.compute_procs is not None
        compute_procs = self.compute_procs
        conn = self.connection()
        names = {c.name for c in self.computes}

        def services_up() -> bool:
            up = {s.host for s in conn.compute.services()
                  if s.binary == "nova-compute" and s.state == "up"}
            return names <= up

        def check() -> None:
            for c in self.computes:
                compute_procs.check(f"nova-compute-{c.name}")
                compute_procs.check(f"agent-{c.name}")

        log = self.plane.log_dir
        procs.wait_for("nova-compute services", services_up, 180, log,
                       check)
        self.plane.discover_hosts()

        def traits() -> bool:
            rps = conn.placement.get(
                "/resource_providers",
                headers={"OpenStack-API-Version": "placement 1.18"},
                params={"required": TRAIT}).json()["resource_providers"]
            return len(rps) >= len(names)

        procs.wait_for(f"{TRAIT} on every compute node", traits, 180,
                       log, check)

    def _images(self, guest: image.GuestImage) -> None:
        conn = self.connection()
        kernel = conn.create_image(
            "lab-kernel", filename=str(guest.kernel), disk_format="aki",
            container_format="aki", is_public=True, wait=True)
        ramdisk = conn.create_image(
            "lab-ramdisk", filename=str(guest.initrd), disk_format="ari",
            container_format="ari", is_public=True, wait=True)
        assert self.lab is not None
        root = Path(self.lab.workdir) / "root.raw"
        with open(root, "wb") as f:
            f.truncate(1024 * 1024)
        self.images = {}
        for name, cmdline in IMAGES.items():
            img = conn.create_image(
                name, filename=str(root), disk_format="ami",
                container_format="ami", is_public=True, wait=True,
                kernel_id=kernel.id, ramdisk_id=ramdisk.id,
                os_command_line=cmdline)
            self.images[name] = img.id
        for flavor_id, (name, ram) in FLAVORS.items():
            conn.compute.create_flavor(name=name, ram=ram, vcpus=1, disk=1,
                                       id=flavor_id)

    def _write_openrc(self) -> Path:
        assert self.plane is not None
        path = self.plane.dir / "openrc"
        path.write_text("".join(f"export {k}={v}\n" for k, v in
                                self.plane.admin_env().items()))
        return path

    def _save_state(self) -> None:
        state = dict(self.info)
        state["pid"] = os.getpid()
        if self.lab is not None:
            state["workdir"] = str(self.lab.workdir)
            state["run_id"] = self.lab.run_id
        pids: list[int] = []
        for p in (self.procs, self.compute_procs):
            if p is not None:
                pids += p.pids()
        state["pids"] = pids
        STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
        tmp = STATE_FILE.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(STATE_FILE)

    # -- down ----------------------------------------------------------

    def down(self) -> None:
        """Stop everything; safe after a partial :meth:`up`."""
        if os.getpid() != self._owner_pid:
            return
        started = time.monotonic()
        steps = []
        if self.compute_procs is not None:
            steps.append(self.compute_procs.stop_all)
        if self.lab is not None:
            steps.append(self.lab.close)
        if self.procs is not None:
            steps.append(self.procs.stop_all)
        if self.plane is not None:
            steps.append(self.plane.stop)
        for step in steps:
            try:
                step()
            except Exception:
                LOG.exception("cloud teardown step %s failed", step)
        if self.lab is not None and not self.keep_workdir:
            shutil.rmtree(self.lab.workdir, ignore_errors=True)
        try:
            if json.loads(STATE_FILE.read_text()).get("pid") == os.getpid():
                STATE_FILE.unlink()
        except (OSError, ValueError):
            pass
        LOG.info("cloud down in %.1f s", time.monotonic() - started)


def stop_running(timeout: float = 120) -> bool:
    """``cloud down``: stop the cloud another process runs."""
    try:
        state = json.loads(STATE_FILE.read_text())
    except (OSError, ValueError):
        return False
    pid = state["pid"]
    try:
        os.kill(pid, 15)
    except ProcessLookupError:
        # The owner died without tearing down: kill what it recorded.
        for p in state.get("pids", []):
            procs.kill_group(p, grace=5)
        STATE_FILE.unlink(missing_ok=True)
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}"):
            return True
        time.sleep(0.5)
    return False
