"""Processes of the lab cloud's control plane, and their teardown.

Why: every service must go away with the cloud, also on failure and
Ctrl-C.  Each process gets its own session (so its workers die with it)
and its PID is written to the cloud's state file as soon as it exists, so
``dcmigrate-lab cloud down`` can stop a cloud whose runner was killed.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
import signal
import subprocess
import time
from typing import Callable
from typing import Mapping

from oslo_log import log as logging

from nova_dcmigrate.lab import exception

LOG = logging.getLogger(__name__)

#: Seconds between SIGTERM and SIGKILL.
KILL_GRACE = 10.0


class CloudError(exception.LabError):
    msg_fmt = "lab cloud: %(reason)s"


class ServiceNotReady(CloudError):
    msg_fmt = "lab cloud: %(service)s not ready after %(timeout).0f s: " \
              "%(reason)s (log %(log)s)"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_group(pid: int, grace: float = KILL_GRACE) -> None:
    """SIGTERM the process group of ``pid``, SIGKILL after ``grace``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.1)
    LOG.warning("pid %d survived SIGKILL", pid)


class Processes:
    """The control plane's processes, stopped in reverse start order."""

    def __init__(self, log_dir: Path,
                 on_change: Callable[[], None] = lambda: None) -> None:
        self.log_dir = log_dir
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._on_change = on_change

    def start(self, name: str, argv: list[str],
              env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        log_path = self.log_dir / f"{name}.log"
        full_env = dict(os.environ)
        full_env.update(env or {})
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
                close_fds=True, cwd="/", env=full_env)
        self.procs.append((name, proc))
        self._on_change()
        LOG.debug("started %s (pid %d): %s", name, proc.pid,
                  " ".join(argv))
        return proc

    def check(self, name: str) -> None:
        for pname, proc in self.procs:
            if pname == name and proc.poll() is not None:
                raise CloudError(reason=f"{name} exited with status "
                                 f"{proc.returncode}; see "
                                 f"{self.log_dir / (name + '.log')}")

    def pids(self) -> list[int]:
        return [proc.pid for _, proc in self.procs]

    def stop_all(self) -> None:
        while self.procs:
            name, proc = self.procs.pop()
            if proc.poll() is None:
                LOG.debug("stopping %s (pid %d)", name, proc.pid)
                kill_group(proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(1)
            self._on_change()


def run(argv: list[str], log: Path, env: Mapping[str, str] | None = None,
        timeout: float = 300, input: str | None = None) -> str:
    """Run a set-up command, appending its output to ``log``."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    started = time.monotonic()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True,
                              env=full_env, timeout=timeout, input=input,
                              stdin=None if input is not None
                              else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as err:
        raise CloudError(reason=f"{argv[0]} timed out after {timeout} s"
                         ) from err
    with open(log, "a") as f:
        f.write(f"$ {' '.join(argv)}  ({time.monotonic() - started:.1f} s,"
                f" rc {proc.returncode})\n{proc.stdout}{proc.stderr}\n")
    if proc.returncode != 0:
        raise CloudError(reason=f"{' '.join(argv[:3])} failed "
                         f"({proc.returncode}): {proc.stderr[-1500:]}")
    return proc.stdout


def wait_for(service: str, probe: Callable[[], bool], timeout: float,
             log: Path, check: Callable[[], None] = lambda: None) -> float:
    """Poll ``probe`` until it returns True; returns the seconds waited."""
    started = time.monotonic()
    reason = "probe never succeeded"
    while time.monotonic() - started < timeout:
        check()
        try:
            if probe():
                return time.monotonic() - started
        except Exception as err:  # noqa: BLE001 - reported on timeout
            reason = str(err)
        time.sleep(0.5)
    raise ServiceNotReady(service=service, timeout=timeout, reason=reason,
                          log=log)
