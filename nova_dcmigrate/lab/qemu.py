"""Run and drive bare QEMU guests inside lab hosts over QMP.

The lab exercises migrations with QEMU alone (no libvirt), which is both the
reference path DCmigrate is measured against and the cheapest way to check
that a stream delivered every page.  A :class:`QemuGuest` is one QEMU
process started in a lab host's namespace plus a synchronous QMP handle.

QMP is spoken by ``qemu.qmp``'s asyncio ``QMPClient``.  Each guest runs that
client in a private event loop on its own thread, so callers stay
synchronous and the guest works from any thread, including ones that already
run an asyncio loop (``qemu.qmp.legacy`` would borrow the caller's loop).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import itertools
import os
from pathlib import Path
import subprocess
import threading
import time
from typing import Any, Coroutine, Mapping, TypeVar

from oslo_log import log as logging
from qemu.qmp import ExecuteError
from qemu.qmp import QMPClient
from qemu.qmp import QMPError

from nova_dcmigrate.lab import exception
from nova_dcmigrate.lab.image import GuestImage
from nova_dcmigrate.lab.serial_console import SerialLog
from nova_dcmigrate.lab.topology import Lab

LOG = logging.getLogger(__name__)

#: QEMU binary; ``$DCMIGRATE_QEMU`` overrides it.  Needs QEMU >= 9: 7.2
#: corrupts RAM when migrating busy TCG guests (see the testbed notes).
QEMU_BINARY = "qemu-system-x86_64"
#: Default seconds to wait for one QMP command.
QMP_TIMEOUT = 30.0
#: Migration states after which QEMU does nothing more on its own.
_FINAL_STATES = frozenset({"completed", "failed", "cancelled"})
_names = itertools.count(1)

_T = TypeVar("_T")


@dataclasses.dataclass(frozen=True)
class MigrationResult:
    """Outcome of one migration, from the source's ``query-migrate``."""

    status: str
    #: QEMU's own timers, in ms (``None`` if QEMU did not report them).
    total_time_ms: int | None
    downtime_ms: int | None
    setup_time_ms: int | None
    #: RAM section counters.
    transferred_bytes: int
    ram_total_bytes: int
    normal_pages: int
    duplicate_pages: int
    dirty_sync_count: int
    mbps: float
    #: vCPU throttle reached with auto-converge (0 = none).
    cpu_throttle_percent: int
    #: Wall-clock seconds from the ``migrate`` command to completion.
    wall_time_s: float | None
    #: The full ``query-migrate`` reply.
    raw: Mapping[str, Any] = dataclasses.field(repr=False)

    @classmethod
    def from_query(cls, info: Mapping[str, Any],
                   wall_time_s: float | None = None) -> MigrationResult:
        ram = info.get("ram", {})
        return cls(
            status=str(info.get("status")),
            total_time_ms=info.get("total-time"),
            downtime_ms=info.get("downtime"),
            setup_time_ms=info.get("setup-time"),
            transferred_bytes=int(ram.get("transferred", 0)),
            ram_total_bytes=int(ram.get("total", 0)),
            normal_pages=int(ram.get("normal", 0)),
            duplicate_pages=int(ram.get("duplicate", 0)),
            dirty_sync_count=int(ram.get("dirty-sync-count", 0)),
            mbps=float(ram.get("mbps", 0.0)),
            cpu_throttle_percent=int(info.get("cpu-throttle-percentage", 0)),
            wall_time_s=wall_time_s,
            raw=dict(info))

    def summary(self) -> str:
        return (f"status={self.status} total={self.total_time_ms}ms "
                f"downtime={self.downtime_ms}ms setup={self.setup_time_ms}ms "
                f"transferred={self.transferred_bytes} "
                f"syncs={self.dirty_sync_count} mbps={self.mbps:.1f} "
                f"throttle={self.cpu_throttle_percent}%")


class _QmpSession:
    """A ``QMPClient`` on a private event loop thread, called synchronously."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.events: collections.deque[Mapping[str, Any]] = (
            collections.deque(maxlen=256))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name=f"qmp-{name}", daemon=True)
        self._thread.start()
        self._client: QMPClient = self._call(self._make_client(), 10)

    async def _make_client(self) -> QMPClient:
        return QMPClient(self.name)

    def _call(self, coro: Coroutine[Any, Any, _T], timeout: float) -> _T:
        future = asyncio.run_coroutine_threadsafe(
            asyncio.wait_for(coro, timeout), self._loop)
        try:
            return future.result(timeout + 5)
        except (asyncio.TimeoutError, concurrent.futures.TimeoutError):
            future.cancel()
            raise TimeoutError(f"QMP call did not finish in {timeout} s")

    def connect(self, path: Path, timeout: float) -> None:
        self._call(self._client.connect(str(path)), timeout)

    async def _execute(self, cmd: str,
                       arguments: Mapping[str, Any] | None) -> Any:
        try:
            return await self._client.execute(cmd, arguments)
        finally:
            # The default listener queues every event forever; keep a few.
            self.events.extend(self._client.events.clear())

    def execute(self, cmd: str, arguments: Mapping[str, Any] | None,
                timeout: float) -> Any:
        return self._call(self._execute(cmd, arguments), timeout)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._call(self._client.disconnect(), 5)
        except Exception as err:  # EOF after quit, or an earlier failure
            LOG.debug("QMP %s: disconnect: %s", self.name, err)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()


class QemuGuest:
    """A QEMU guest running in a lab host; create it with :meth:`start`."""

    def __init__(self, lab: Lab, host: str, image: GuestImage, name: str,
                 memory_mib: int, dirty_mib: int, dirty_rate: int,
                 incoming: str | None, argv: list[str],
                 proc: subprocess.Popen[bytes], serial_log: Path,
                 qmp_socket: Path) -> None:
        self.lab = lab
        self.host = host
        self.image = image
        self.name = name
        self.memory_mib = memory_mib
        self.dirty_mib = dirty_mib
        self.dirty_rate = dirty_rate
        self.incoming = incoming
        self.argv = argv
        self.proc = proc
        self.serial_log = serial_log
        self.console = SerialLog(serial_log, name)
        self.qmp_socket = qmp_socket
        self.started_at = time.monotonic()
        self._qmp: _QmpSession | None = None
        self._migrate_started: float | None = None
        self._stopped = False

    def __repr__(self) -> str:
        return (f"<QemuGuest {self.name} on {self.host} pid={self.proc.pid} "
                f"{self.memory_mib}MiB>")

    @property
    def address(self) -> str:
        """Address of the lab host this guest runs on."""
        return self.lab.hosts[self.host].address

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * 1024 * 1024

    # -- lifecycle -----------------------------------------------------------

    @classmethod
    def start(cls, lab: Lab, host: str, image: GuestImage, *,
              memory_mib: int = 256, dirty_mib: int = 0, dirty_rate: int = 0,
              incoming: str | None = None, name: str | None = None,
              extra_args: list[str] | None = None,
              connect_timeout: float = 30.0) -> QemuGuest:
        """Start QEMU in ``host``'s namespace and connect to its QMP socket.

        :param dirty_mib: MiB the guest dirties (0: idle guest).
        :param dirty_rate: MiB/s to dirty them at (0: as fast as possible).
        :param incoming: start as a paused migration destination with
            ``-incoming <incoming>`` (e.g. ``tcp:10.213.5.3:20000`` or
            ``defer``, then call :meth:`migrate_incoming`).
        :param name: file and QMP name; unique by default.
        :raises GuestExited: if QEMU exits before QMP answers.
        """
        if dirty_mib < 0 or dirty_rate < 0 or memory_mib <= 0:
            raise exception.LabError(
                reason=f"invalid guest size: memory {memory_mib} MiB, "
                       f"dirty {dirty_mib} MiB at {dirty_rate} MiB/s")
        if dirty_mib and dirty_mib >= memory_mib - 32:
            raise exception.LabError(
                reason=f"dirty_mib={dirty_mib} does not fit a "
                       f"{memory_mib} MiB guest (keep 32 MiB for the "
                       f"kernel and initramfs)")
        name = name or f"{host}-vm{next(_names)}"
        serial_log = lab.workdir / f"{name}.serial.log"
        qmp_socket = lab.workdir / f"{name}.qmp"
        if qmp_socket.exists() or serial_log.exists():
            raise exception.LabError(
                reason=f"a guest named {name} already ran in this lab")
        append = (f"console=ttyS0 quiet panic=-1 dirty_mib={dirty_mib} "
                  f"dirty_rate={dirty_rate}")
        argv = [
            os.environ.get("DCMIGRATE_QEMU", QEMU_BINARY),
            "-name", name,
            "-accel", "tcg",
            # Guest RAM in a shared memfd (as Nova's driver boots guests
            # with [dcmigrate_compute] memory_backing = memfd): the
            # destination agent holds it instead of copying pages.  The
            # RAM block keeps QEMU's default name, pc.ram.
            "-object", f"memory-backend-memfd,id=pc.ram,"
                       f"size={memory_mib}M,share=on",
            "-machine", "pc,memory-backend=pc.ram",
            "-m", str(memory_mib),
            "-smp", "1",
            "-nodefaults", "-no-user-config",
            "-display", "none",
            "-kernel", str(image.kernel),
            "-initrd", str(image.initrd),
            "-append", append,
            "-serial", f"file:{serial_log}",
            "-qmp", f"unix:{qmp_socket},server=on,wait=off",
        ]
        if incoming is not None:
            argv += ["-S", "-incoming", incoming]
        argv += extra_args or []
        proc = lab.spawn(host, argv, log_name=f"{name}.qemu.log")
        guest = cls(lab, host, image, name, memory_mib, dirty_mib,
                    dirty_rate, incoming, argv, proc, serial_log, qmp_socket)
        lab.add_cleanup(guest.stop)
        LOG.info("Started guest %s on %s (pid %d, %d MiB, dirty %d MiB @ "
                 "%s MiB/s%s)", name, host, proc.pid, memory_mib, dirty_mib,
                 dirty_rate or "max",
                 f", incoming {incoming}" if incoming else "")
        try:
            guest._connect(connect_timeout)
        except BaseException:
            guest.stop()
            raise
        return guest

    def _connect(self, timeout: float) -> None:
        session = _QmpSession(self.name)
        deadline = time.monotonic() + timeout
        error: Exception | None = None
        while True:
            try:
                self._check_running("connecting to QMP")
            except exception.GuestExited:
                session.close()
                raise
            # Connecting before QEMU created the socket would only make
            # qemu.qmp log an error per attempt.
            if self.qmp_socket.exists():
                try:
                    session.connect(self.qmp_socket, 5)
                    break
                except (QMPError, OSError, TimeoutError) as err:
                    error = err
            if time.monotonic() > deadline:
                session.close()
                raise exception.GuestTimeout(
                    name=self.name,
                    waiting_for=f"QMP connection ({error or 'no socket'})",
                    timeout=timeout, serial_log=self.serial_log)
            time.sleep(0.05)
        self._qmp = session

    def _check_running(self, waiting_for: str) -> None:
        code = self.proc.poll()
        if code is not None:
            raise exception.GuestExited(
                name=self.name, returncode=code, waiting_for=waiting_for,
                output=self._tail(self.lab.workdir / f"{self.name}.qemu.log")
                or self._tail(self.serial_log))

    @staticmethod
    def _tail(path: Path, limit: int = 800) -> str:
        try:
            return path.read_text(errors="replace")[-limit:].strip()
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """Quit QEMU (QMP ``quit``), killing it if it does not exit."""
        if self._stopped:
            return
        self._stopped = True
        if self.proc.poll() is None and self._qmp is not None:
            try:
                self._qmp.execute("quit", None, 5)
            except Exception as err:  # QEMU may close QMP before replying
                LOG.debug("Guest %s: quit: %s", self.name, err)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                LOG.warning("Guest %s did not quit in %s s; killing it",
                            self.name, timeout)
        self.lab.terminate(self.proc)
        if self._qmp is not None:
            self._qmp.close()
        LOG.debug("Guest %s stopped (status %s)", self.name,
                  self.proc.returncode)

    # -- QMP ---------------------------------------------------------------

    def qmp(self, cmd: str, arguments: Mapping[str, Any] | None = None, *,
            timeout: float = QMP_TIMEOUT, **args: Any) -> Any:
        """Run one QMP command and return its ``return`` value.

        Arguments come from ``arguments`` and/or keyword arguments (use the
        mapping for names with dashes, or for an argument named timeout).

        :raises QmpCommandError: when QEMU answers with an error.
        :raises GuestExited: when QEMU is gone.
        """
        merged = {**(arguments or {}), **args}
        if self._qmp is None or self._stopped:
            raise exception.QmpCommandError(name=self.name, command=cmd,
                                            error="guest is stopped")
        try:
            return self._qmp.execute(cmd, merged or None, timeout)
        except ExecuteError as err:
            raise exception.QmpCommandError(
                name=self.name, command=cmd,
                error=f"{err.error_class}: {err}") from err
        except (QMPError, OSError, TimeoutError) as err:
            self._check_running(f"running QMP {cmd}")
            raise exception.QmpCommandError(
                name=self.name, command=cmd,
                error=f"{type(err).__name__}: {err}") from err

    def status(self) -> str:
        """The run state (``running``, ``paused``, ``inmigrate``, ...)."""
        return str(self.qmp("query-status")["status"])

    def cont(self) -> None:
        self.qmp("cont")

    def pmemsave(self, path: Path, size: int, address: int = 0) -> None:
        """Dump guest-physical memory ``[address, address+size)`` to a file.

        Fine for guests below the PCI hole (< ~3 GiB), where RAM is
        contiguous from 0.
        """
        self.qmp("pmemsave", {"val": address, "size": size,
                              "filename": str(path)}, timeout=300)

    # -- serial console ------------------------------------------------------

    def serial_output(self) -> str:
        return self.console.output()

    def alive_count(self) -> int:
        """Number of ``alive`` lines the guest has printed so far."""
        return self.console.alive_count()

    def wait_booted(self, timeout: float = 120.0) -> float:
        """Wait for ``BOOT_DONE`` (and the dirtier running, if asked for).

        :returns: seconds since QEMU was started.
        :raises GuestTimeout: if the marks do not appear in time.
        :raises GuestExited: if QEMU exits meanwhile.
        """
        self.console.wait_booted(bool(self.dirty_mib), self._check_running,
                                 timeout)
        elapsed = time.monotonic() - self.started_at
        LOG.info("Guest %s booted in %.1f s", self.name, elapsed)
        return elapsed

    def wait_alive(self, after_lines: int = 0, timeout: float = 30.0) -> float:
        """Wait until the guest prints an ``alive`` line beyond the first
        ``after_lines`` ones (e.g. after ``cont`` on a destination).

        :returns: the guest uptime in the newest ``alive`` line.
        """
        return self.console.wait_alive(after_lines, self._check_running,
                                       timeout)

    # -- migration ---------------------------------------------------------

    @staticmethod
    def _qmp_names(values: Mapping[str, Any]) -> dict[str, Any]:
        return {key.replace("_", "-"): value for key, value in values.items()}

    def set_migration_caps(self, **caps: bool) -> dict[str, bool]:
        """``migrate-set-capabilities``; ``return_path`` defaults to on.

        libvirt always enables return-path for precopy; so do we, unless
        ``return_path=False`` is passed.  Names may use ``_`` for ``-``
        (``switchover_ack=True``, ``auto_converge=True``).
        """
        wanted = {"return-path": True, **self._qmp_names(caps)}
        self.qmp("migrate-set-capabilities", capabilities=[
            {"capability": cap, "state": bool(state)}
            for cap, state in wanted.items()])
        return wanted

    def migration_caps(self) -> dict[str, bool]:
        """Current migration capabilities (they persist across migrations)."""
        return {item["capability"]: bool(item["state"])
                for item in self.qmp("query-migrate-capabilities")}

    def set_migration_params(self, **params: Any) -> dict[str, Any]:
        """``migrate-set-parameters``, e.g. ``max_bandwidth`` (bytes/s),
        ``downtime_limit`` (ms), ``avail_switchover_bandwidth`` (bytes/s).
        """
        converted = self._qmp_names(params)
        self.qmp("migrate-set-parameters", converted)
        return converted

    def migrate(self, uri: str) -> None:
        """Start an outgoing migration; returns at once (wait_migration)."""
        self._migrate_started = time.monotonic()
        self.qmp("migrate", uri=uri)
        LOG.info("Guest %s: migrating to %s", self.name, uri)

    def migrate_incoming(self, uri: str) -> None:
        """Listen on a destination started with ``incoming='defer'``."""
        self.qmp("migrate-incoming", uri=uri)

    def migrate_cancel(self) -> None:
        self.qmp("migrate_cancel")

    def query_migrate(self) -> dict[str, Any]:
        return dict(self.qmp("query-migrate"))

    def wait_migration(self, timeout: float = 600.0,
                       poll: float = 0.2) -> MigrationResult:
        """Poll ``query-migrate`` until the migration ends.

        :raises MigrationFailed: when it ends ``failed`` or ``cancelled``.
        :raises MigrationTimeout: when it is still running after
            ``timeout`` seconds (it is left running).
        """
        deadline = time.monotonic() + timeout
        info: dict[str, Any] = {}
        while time.monotonic() < deadline:
            info = self.query_migrate()
            status = info.get("status")
            if status in _FINAL_STATES:
                wall = (time.monotonic() - self._migrate_started
                        if self._migrate_started is not None else None)
                result = MigrationResult.from_query(info, wall)
                if status != "completed":
                    raise exception.MigrationFailed(
                        name=self.name, status=status,
                        error=info.get("error-desc", "no error reported"))
                LOG.info("Guest %s: migration %s", self.name,
                         result.summary())
                return result
            time.sleep(poll)
        ram = info.get("ram", {})
        raise exception.MigrationTimeout(
            name=self.name, status=info.get("status"), timeout=timeout,
            transferred=ram.get("transferred"),
            remaining=ram.get("remaining"))

    def wait_status(self, wanted: str | set[str], timeout: float = 30.0
                    ) -> str:
        """Wait until :meth:`status` is ``wanted`` (or one of them)."""
        states = {wanted} if isinstance(wanted, str) else set(wanted)
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if status in states:
                return status
            if time.monotonic() > deadline:
                raise exception.GuestTimeout(
                    name=self.name,
                    waiting_for=f"run state {sorted(states)} (is {status})",
                    timeout=timeout, serial_log=self.serial_log)
            time.sleep(0.1)
