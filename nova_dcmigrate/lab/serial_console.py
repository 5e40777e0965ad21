"""The lab guest's serial console log: boot marks and ``alive`` lines.

The lab guest (``lab/guest/init``) prints ``BOOT_DONE``, the memory
dirtier's ``DIRTY_*`` marks, then ``alive <uptime>`` every 5 s, on its
serial console, which QEMU writes to a file.  That file is how every lab
test knows a guest booted and -- after a migration -- that it runs on at
the destination, whether QEMU was started by the lab
(:mod:`nova_dcmigrate.lab.qemu`) or by libvirt
(:mod:`nova_dcmigrate.lab.libvirt_guest`).  This is the one reader of it;
the guest classes only say how to tell that their QEMU is still there.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
import re
import time

from nova_dcmigrate.lab import exception

BOOT_MARK = "BOOT_DONE"
DIRTY_MARKS = ("DIRTY_STARTED", "DIRTY_RUNNING")
DIRTY_FAILED = "DIRTY_FAILED"
ALIVE_RE = re.compile(r"^alive ([0-9.]+)\s*$", re.MULTILINE)
#: Seconds between two reads of the log while waiting.
POLL_S = 0.2

#: Raises when the guest cannot print any more (its QEMU is gone); the
#: argument says what was being waited for.
Check = Callable[[str], None]


class SerialLog:
    """A guest's serial log file (shared by all hosts of the lab)."""

    def __init__(self, path: Path, name: str) -> None:
        self.path = path
        self.name = name

    def output(self) -> str:
        """Everything the guest printed so far ("" before QEMU opened
        the file)."""
        try:
            return self.path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, limit: int = 800) -> str:
        return self.output()[-limit:].strip()

    def alive_count(self) -> int:
        """Number of ``alive`` lines the guest has printed so far."""
        return len(ALIVE_RE.findall(self.output()))

    def wait_booted(self, dirty: bool, check: Check,
                    timeout: float = 120.0) -> None:
        """Wait for ``BOOT_DONE`` (and the dirtier running if ``dirty``).

        :raises GuestError: if the dirtier failed.
        :raises GuestTimeout: if the marks do not appear in time.
        """
        marks = [BOOT_MARK] + (list(DIRTY_MARKS) if dirty else [])
        deadline = time.monotonic() + timeout
        while True:
            output = self.output()
            if DIRTY_FAILED in output:
                raise exception.GuestError(
                    name=self.name, reason="memory dirtier failed: %r"
                    % output[-500:])
            if all(mark in output for mark in marks):
                return
            check("booting")
            if time.monotonic() > deadline:
                raise exception.GuestTimeout(
                    name=self.name,
                    waiting_for=" and ".join(m for m in marks
                                             if m not in output),
                    timeout=timeout, serial_log=self.path)
            time.sleep(POLL_S)

    def wait_alive(self, after_lines: int, check: Check,
                   timeout: float = 30.0) -> float:
        """Wait for an ``alive`` line beyond the first ``after_lines``
        (e.g. after resuming a migrated guest).

        :returns: the guest uptime in the newest ``alive`` line.
        :raises GuestTimeout: if none comes in time.
        """
        deadline = time.monotonic() + timeout
        while True:
            found = ALIVE_RE.findall(self.output())
            if len(found) > after_lines:
                return float(found[-1])
            check("waiting for the guest to print 'alive'")
            if time.monotonic() > deadline:
                raise exception.GuestTimeout(
                    name=self.name,
                    waiting_for=f"'alive' line after the first {after_lines}",
                    timeout=timeout, serial_log=self.path)
            time.sleep(POLL_S)
