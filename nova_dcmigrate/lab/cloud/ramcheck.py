"""Guest RAM byte for byte after a redirect through the cloud.

Tempest sees only APIs, so the memory check is the lab's: a server is
booted (dirtying guest), paused (its RAM can no longer change), its RAM
is dumped on the source, it is live-migrated through Nova's API, the
migration is redirected to a third host over the compute RPC mid-flight,
and the RAM dumped on the final host must equal the source's dump, page
for page.  The source's uplink is slowed for the move, so the redirect
lands while the first attempt is still copying; the old destination then
relays the pages it already holds (as in any redirect).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
import subprocess
import sys
import time
from typing import Any

import libvirt
import libvirt_qemu
from oslo_log import log as logging

from nova_dcmigrate.lab.cloud import procs
from nova_dcmigrate.lab import ramcheck

LOG = logging.getLogger(__name__)

MICROVERSION = "2.80"


@dataclasses.dataclass
class RedirectRamResult:
    identical: bool
    differing_pages: int
    size_bytes: int
    final_host: str
    redirect_status: dict[str, Any]
    seconds: float


def _api(conn: Any, method: str, url: str, **kwargs: Any) -> Any:
    resp = getattr(conn.compute, method)(url, microversion=MICROVERSION,
                                         raise_exc=True, **kwargs)
    return resp.json() if resp.content else None


def _server(conn: Any, sid: str) -> dict[str, Any]:
    server: dict[str, Any] = _api(conn, "get", f"/servers/{sid}")["server"]
    return server


def _wait(conn: Any, sid: str, status: str, timeout: float = 300,
          host: str | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    server: dict[str, Any] = {}
    while time.monotonic() < deadline:
        server = _server(conn, sid)
        if server["status"] == "ERROR":
            raise procs.CloudError(reason=f"server {sid} went to ERROR: "
                                   f"{server.get('fault')}")
        if (server["status"] == status and
                server.get("OS-EXT-STS:task_state") is None and
                (host is None or
                 server["OS-EXT-SRV-ATTR:host"] == host)):
            return server
        time.sleep(1)
    raise procs.CloudError(reason=f"server {sid} not {status} on "
                           f"{host or 'any host'}: {server.get('status')} "
                           f"{server.get('OS-EXT-SRV-ATTR:host')}")


def _pmemsave(conn: libvirt.virConnect, domain: str, size: int,
              path: Path) -> None:
    dom = conn.lookupByName(domain)
    libvirt_qemu.qemuMonitorCommand(
        dom, f'pmemsave 0 {size} "{path}"',
        libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
    if path.stat().st_size != size:
        raise procs.CloudError(reason=f"RAM dump {path} is short")


def redirect_ram_check(cloud: Any, slow_rate: str | None = None
                       ) -> RedirectRamResult:
    """hosta -> hostb, redirected to hostc; RAM compared (paused guest)."""
    started = time.monotonic()
    conn = cloud.connection()
    plane = cloud.plane
    hosts = {c.name: c for c in cloud.computes}
    src, old, new = sorted(hosts)[:3]
    ram_mib = 512
    body = {"server": {"name": "ramcheck", "imageRef":
                       cloud.images["lab-guest-busy"], "flavorRef": "43",
                       "networks": "none",
                       "availability_zone": f"nova:{src}"}}
    sid = _api(conn, "post", "/servers", json=body)["server"]["id"]
    try:
        server = _wait(conn, sid, "ACTIVE", host=src)
        time.sleep(8)  # let the guest dirty its memory
        _api(conn, "post", f"/servers/{sid}/action", json={"pause": None})
        server = _wait(conn, sid, "PAUSED")
        domain = server["OS-EXT-SRV-ATTR:instance_name"]
        size = ram_mib << 20
        src_dump = Path(plane.dir) / "ram-src"
        dst_dump = Path(plane.dir) / "ram-dst"
        _pmemsave(hosts[src].libvirt.conn, domain, size, src_dump)
        lab_src = hosts[src].libvirt.host
        if slow_rate:
            cloud.lab.set_rate(lab_src, f"{slow_rate}/{cloud.rate}")
        try:
            _api(conn, "post", f"/servers/{sid}/action", json={
                "os-migrateLive": {"host": old, "block_migration": "auto"}})
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                migs = _api(conn, "get", f"/servers/{sid}/migrations")
                if any(m["status"] == "running"
                       for m in migs["migrations"]):
                    break
                time.sleep(0.5)
            else:
                raise procs.CloudError(reason="live migration for the RAM "
                                       "check never ran")
            time.sleep(3)
            out = subprocess.run(
                [sys.executable, "-m",
                 "nova_dcmigrate.lab.cloud.rpc_redirect",
                 str(plane.nova_conf), sid, new], capture_output=True,
                text=True, timeout=900)
            with open(plane.setup_log, "a") as log:
                log.write(out.stdout + out.stderr)
            lines = [line for line in out.stdout.splitlines()
                     if line.startswith("{")]
            status = json.loads(lines[-1]) if lines else {}
            if out.returncode != 0:
                raise procs.CloudError(reason=f"RPC redirect failed: "
                                       f"{out.stdout[-500:]}"
                                       f"{out.stderr[-1500:]}")
            server = _wait(conn, sid, "PAUSED", host=new)
        finally:
            if slow_rate:
                cloud.lab.set_rate(lab_src, cloud.rate)
        _pmemsave(hosts[new].libvirt.conn, domain, size, dst_dump)
        result = ramcheck.compare_files(src_dump, dst_dump, size)
        for dump in (src_dump, dst_dump):
            dump.unlink(missing_ok=True)
        leftover = [d.name() for d in hosts[old].libvirt.conn.listAllDomains()]
        if leftover:
            raise procs.CloudError(reason=f"domains left on the old "
                                   f"destination {old}: {leftover}")
        return RedirectRamResult(
            identical=result.identical,
            differing_pages=result.differing_pages, size_bytes=size,
            final_host=server["OS-EXT-SRV-ATTR:host"],
            redirect_status=status,
            seconds=round(time.monotonic() - started, 1))
    finally:
        _api(conn, "delete", f"/servers/{sid}")
