"""The lab guest as a libvirt domain on a :class:`LibvirtHost`.

Same guest as :mod:`nova_dcmigrate.lab.qemu` (Debian kernel + busybox
initramfs with the memory dirtier, booted directly, ``BOOT_DONE`` /
``alive`` on the serial console), described as a ``<domain type='qemu'>``
(TCG): machine ``pc``, ``<features><acpi/></features>``, no disk, no NIC,
``<memballoon model='none'/>``, and the serial console in a file in the lab
workdir.  All hosts share that file system, so after a migration the
destination QEMU appends to the same serial log (``append='on'``), readable
from the root namespace.

Guest RAM is backed by a shared memfd (``<memoryBacking><source
type='memfd'/><access mode='shared'/>``).  Migration is unchanged (the RAM
is sent as usual; ``x-ignore-shared`` stays off), but the memfd lets the
lab read the RAM block of a QEMU from outside, and keep it after libvirt
killed that QEMU: see :func:`open_guest_ram` and
:mod:`nova_dcmigrate.lab.libvirt_migration`.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
import time
import uuid
from xml.sax.saxutils import escape
from xml.sax.saxutils import quoteattr

import libvirt
from oslo_log import log as logging

from nova_dcmigrate.lab import exception
from nova_dcmigrate.lab.image import GuestImage
from nova_dcmigrate.lab.libvirt_host import LibvirtHost
from nova_dcmigrate.lab.serial_console import SerialLog

LOG = logging.getLogger(__name__)

#: QEMU of the domains; libvirt's default for x86_64 on Debian.
EMULATOR = "/usr/bin/qemu-system-x86_64"
#: Name QEMU gives the memfd of a ``memory-backend-memfd``.
MEMFD_NAME = "memory-backend-memfd"
_names = itertools.count(1)

#: virDomainState values by name, for messages.
STATE_NAMES = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}


class LibvirtGuestError(exception.GuestError):
    pass


def domain_xml(name: str, domain_uuid: str, image: GuestImage,
               serial_log: Path, *, memory_mib: int = 256,
               dirty_mib: int = 0, dirty_rate: int = 0,
               emulator: str = EMULATOR, disk: str | None = None) -> str:
    """Domain XML of the lab guest (see the module docstring).

    :param disk: a qcow2 image attached as ``vda`` (virtio), e.g. for a
        block migration; its path is the same on every host, so it must
        lie in a host-private directory (the hosts' ``/run``).
    """
    disk_xml = "" if disk is None else f"""
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file={quoteattr(disk)}/>
      <target dev='vda' bus='virtio'/>
    </disk>"""
    cmdline = (f"console=ttyS0 quiet panic=-1 dirty_mib={dirty_mib} "
               f"dirty_rate={dirty_rate}")
    return f"""<domain type='qemu'>
  <name>{escape(name)}</name>
  <uuid>{domain_uuid}</uuid>
  <memory unit='MiB'>{memory_mib}</memory>
  <currentMemory unit='MiB'>{memory_mib}</currentMemory>
  <memoryBacking>
    <source type='memfd'/>
    <access mode='shared'/>
  </memoryBacking>
  <vcpu placement='static'>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(image.kernel))}</kernel>
    <initrd>{escape(str(image.initrd))}</initrd>
    <cmdline>{escape(cmdline)}</cmdline>
  </os>
  <features>
    <acpi/>
  </features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>{escape(emulator)}</emulator>
    <controller type='usb' model='none'/>{disk_xml}
    <serial type='file'>
      <source path={quoteattr(str(serial_log))} append='on'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>
"""


class LibvirtGuest:
    """A lab guest defined on a libvirt host; create with :meth:`start`.

    :attr:`host` follows the guest: the migration helpers update it when
    the domain moved.
    """

    def __init__(self, host: LibvirtHost, image: GuestImage, name: str,
                 domain_uuid: str, memory_mib: int, dirty_mib: int,
                 dirty_rate: int, serial_log: Path, xml: str) -> None:
        self.host = host
        self.lab = host.lab
        self.image = image
        self.name = name
        self.uuid = domain_uuid
        self.memory_mib = memory_mib
        self.dirty_mib = dirty_mib
        self.dirty_rate = dirty_rate
        self.serial_log = serial_log
        self.console = SerialLog(serial_log, name)
        self.xml = xml
        self.started_at = time.monotonic()
        #: Hosts the domain may have been defined on (for cleanup).
        self.seen_on: dict[str, LibvirtHost] = {host.host: host}
        self._destroyed = False

    def __repr__(self) -> str:
        return f"<LibvirtGuest {self.name} on {self.host.host}>"

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * 1024 * 1024

    # -- lifecycle -----------------------------------------------------------

    @classmethod
    def start(cls, host: LibvirtHost, image: GuestImage, *,
              memory_mib: int = 256, dirty_mib: int = 0, dirty_rate: int = 0,
              name: str | None = None, persistent: bool = True,
              disk: str | None = None) -> LibvirtGuest:
        """Define (if ``persistent``) and start the guest on ``host``.

        Returns at once; call :meth:`wait_booted`.
        """
        if memory_mib <= 0 or dirty_mib < 0 or dirty_rate < 0:
            raise exception.LabError(
                reason=f"invalid guest size: memory {memory_mib} MiB, "
                       f"dirty {dirty_mib} MiB at {dirty_rate} MiB/s")
        if dirty_mib and dirty_mib >= memory_mib - 32:
            raise exception.LabError(
                reason=f"dirty_mib={dirty_mib} does not fit a "
                       f"{memory_mib} MiB guest")
        lab = host.lab
        name = name or f"lv-{host.host}-{next(_names)}"
        serial_log = Path(lab.workdir) / f"{name}.serial.log"
        if serial_log.exists():
            raise exception.LabError(
                reason=f"a guest named {name} already ran in this lab")
        domain_uuid = str(uuid.uuid4())
        xml = domain_xml(name, domain_uuid, image, serial_log,
                         memory_mib=memory_mib, dirty_mib=dirty_mib,
                         dirty_rate=dirty_rate, disk=disk)
        guest = cls(host, image, name, domain_uuid, memory_mib, dirty_mib,
                    dirty_rate, serial_log, xml)
        lab.add_cleanup(guest.destroy)
        started = time.monotonic()
        try:
            if persistent:
                dom = host.conn.defineXML(xml)
                dom.create()
            else:
                host.conn.createXML(xml, 0)
        except libvirt.libvirtError as err:
            raise LibvirtGuestError(
                name=name, reason=f"cannot start on {host.host}: {err}; "
                                  f"{host.domain_log(name)}") from err
        guest.started_at = time.monotonic()
        LOG.info("Started libvirt guest %s on %s in %.2f s (%d MiB, dirty "
                 "%d MiB @ %s MiB/s)", name, host.host,
                 guest.started_at - started, memory_mib, dirty_mib,
                 dirty_rate or "max")
        return guest

    def destroy(self) -> None:
        """Destroy and undefine the domain wherever it is defined."""
        if self._destroyed:
            return
        self._destroyed = True
        for host in self.seen_on.values():
            try:
                dom = host.conn.lookupByUUIDString(self.uuid)
            except (libvirt.libvirtError, exception.LabError):
                continue
            for call in (dom.destroy, dom.undefine):
                try:
                    call()
                except libvirt.libvirtError as err:
                    LOG.debug("guest %s on %s: %s: %s", self.name,
                              host.host, call.__name__, err)

    def moved_to(self, host: LibvirtHost) -> None:
        """Record that the domain now runs on ``host``."""
        self.host = host
        self.seen_on[host.host] = host

    # -- libvirt -------------------------------------------------------------

    def domain(self, host: LibvirtHost | None = None) -> libvirt.virDomain:
        """The domain object on ``host`` (default: the current host)."""
        return (host or self.host).conn.lookupByUUIDString(self.uuid)

    @property
    def dom(self) -> libvirt.virDomain:
        return self.domain()

    def state(self, host: LibvirtHost | None = None) -> tuple[int, int]:
        """``(state, reason)`` of the domain, e.g. ``(VIR_DOMAIN_RUNNING,
        VIR_DOMAIN_RUNNING_MIGRATION_CANCELED)``."""
        state, reason = self.domain(host).state()
        return state, reason

    def state_name(self, host: LibvirtHost | None = None) -> str:
        state, reason = self.state(host)
        return f"{STATE_NAMES.get(state, state)}/{reason}"

    def is_running(self, host: LibvirtHost | None = None) -> bool:
        return bool(self.state(host)[0] == libvirt.VIR_DOMAIN_RUNNING)

    def wait_state(self, wanted: int, host: LibvirtHost | None = None,
                   timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.state(host)[0] == wanted:
                    return
            except libvirt.libvirtError:
                pass
            if time.monotonic() > deadline:
                raise exception.GuestTimeout(
                    name=self.name,
                    waiting_for=f"state {STATE_NAMES.get(wanted, wanted)} "
                                f"on {(host or self.host).host}",
                    timeout=timeout, serial_log=self.serial_log)
            time.sleep(0.1)

    def resume(self) -> None:
        self.dom.resume()

    def suspend(self) -> None:
        self.dom.suspend()

    def qemu_pid(self, host: LibvirtHost | None = None) -> int | None:
        """PID of the QEMU running the guest on ``host`` (default current)."""
        return (host or self.host).qemu_pid(self.name)

    def open_ram(self, host: LibvirtHost | None = None) -> int:
        """Open the guest's RAM block on ``host``; see :func:`open_guest_ram`.
        """
        pid = self.qemu_pid(host)
        if pid is None:
            raise LibvirtGuestError(
                name=self.name,
                reason=f"no QEMU on {(host or self.host).host}")
        return open_guest_ram(pid, self.memory_bytes, self.name)

    # -- serial console ------------------------------------------------------

    def serial_output(self) -> str:
        return self.console.output()

    def alive_count(self) -> int:
        """Number of ``alive`` lines the guest has printed so far."""
        return self.console.alive_count()

    def _check_active(self, doing: str) -> None:
        try:
            active = self.dom.isActive()
        except libvirt.libvirtError as err:
            raise LibvirtGuestError(
                name=self.name, reason=f"gone while {doing}: {err}") from err
        if not active:
            raise LibvirtGuestError(
                name=self.name,
                reason=f"shut off while {doing}; serial: "
                       f"{self.console.tail(500)!r}; "
                       f"{self.host.domain_log(self.name)}")

    def wait_booted(self, timeout: float = 120.0) -> float:
        """Wait for ``BOOT_DONE`` (and the dirtier, if any); returns the
        seconds since the domain was started."""
        self.console.wait_booted(bool(self.dirty_mib), self._check_active,
                                 timeout)
        elapsed = time.monotonic() - self.started_at
        LOG.info("Libvirt guest %s booted in %.1f s", self.name, elapsed)
        return elapsed

    def wait_alive(self, after_lines: int = 0, timeout: float = 30.0) -> float:
        """Wait for an ``alive`` line beyond the first ``after_lines``;
        returns the guest uptime it reports."""
        return self.console.wait_alive(after_lines, self._check_active,
                                       timeout)


def open_guest_ram(pid: int, size: int, name: str = "?") -> int:
    """Open the memfd holding the guest RAM of QEMU ``pid`` (read-only).

    The returned descriptor is the caller's (``os.close`` it).  It refers
    to the RAM block itself, not to a copy: its content is the guest's RAM
    now and changes while the guest runs; it stays readable after QEMU
    exits, frozen as QEMU left it.  Offset ``x`` is guest-physical ``x``
    for guests below the PCI hole (the ``pc`` machine maps low RAM from
    offset 0), but unlike a ``pmemsave`` dump it is raw RAM: the legacy
    VGA/ROM windows below 1 MiB show the RAM underneath.

    :raises LibvirtGuestError: if QEMU has no memfd of ``size`` bytes.
    """
    fd_dir = Path(f"/proc/{pid}/fd")
    candidates = []
    try:
        entries = list(fd_dir.iterdir())
    except OSError as err:
        raise LibvirtGuestError(name=name,
                                reason=f"cannot list {fd_dir}: {err}") from err
    for entry in entries:
        try:
            target = os.readlink(entry)
        except OSError:
            continue
        if target.startswith(f"/memfd:{MEMFD_NAME}"):
            candidates.append(entry)
    for entry in candidates:
        try:
            fd = os.open(entry, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        if os.fstat(fd).st_size == size:
            return fd
        os.close(fd)
    raise LibvirtGuestError(
        name=name, reason=f"QEMU pid {pid} has no {MEMFD_NAME} memfd of "
                          f"{size} bytes (found {len(candidates)} memfds)")
