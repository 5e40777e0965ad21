"""Who uses a shared system service, told by file locks.

Why: concurrent lab runs share one RabbitMQ broker.  A run that started
the broker used to stop it at its end, under the feet of any run that
had started using it meanwhile.  Each user now holds a shared
``flock`` on one lock file while it uses the service; whoever wants to
stop it must first get the lock exclusively, which only succeeds when
nobody else holds it.  A second lock file serialises starting the
service, so two runs that both find it down do not both start it.

The locks belong to open files: they go away when the holder closes the
file or dies (no stale state to clean up), and are not passed to the
programs a holder runs (Python opens files close-on-exec).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from nova_dcmigrate.lab.exception import LabError
from nova_dcmigrate.lab.exception import SharedServiceBusy

#: How long acquire() waits for a user that is stopping the service.
ACQUIRE_TIMEOUT = 180.0
_POLL_S = 0.2


class SharedUse:
    """One user's claim on a shared service, at ``lock_path``."""

    def __init__(self, lock_path: Path,
                 timeout: float = ACQUIRE_TIMEOUT) -> None:
        self.lock_path = Path(lock_path)
        self.start_lock_path = self.lock_path.with_name(
            self.lock_path.name + ".start")
        self.timeout = timeout
        self._file: IO[bytes] | None = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def _locked(self, path: Path, how: int, what: str) -> IO[bytes]:
        """``path`` opened and flocked (``how``: LOCK_SH or LOCK_EX),
        waiting at most :attr:`timeout` seconds.

        :raises SharedServiceBusy: still taken after that.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "ab")
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(f, how | fcntl.LOCK_NB)
                return f
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES):
                    f.close()
                    raise
            if time.monotonic() > deadline:
                f.close()
                raise SharedServiceBusy(
                    action=what, path=str(path), timeout=self.timeout,
                    holders=holders(path) or "unknown")
            time.sleep(_POLL_S)

    def acquire(self) -> SharedUse:
        """Become a user (shared lock); waits while someone stops it."""
        if self._file is None:
            self._file = self._locked(self.lock_path, fcntl.LOCK_SH,
                                      "using the shared service")
        return self

    @contextlib.contextmanager
    def starting(self) -> Iterator[None]:
        """Be the only one starting the service in this block (check
        again inside whether it still needs starting)."""
        with self._locked(self.start_lock_path, fcntl.LOCK_EX,
                          "starting the shared service"):
            yield

    def sole_user(self) -> bool:
        """Whether nobody else uses the service; if so, this user holds
        the lock exclusively until :meth:`release` (no one can start
        using it meanwhile).  Only for a user about to release: when
        others hold it, Linux may drop this user's shared lock while
        trying (flock(2): conversions are not atomic)."""
        if self._file is None:
            raise LabError(reason="sole_user() without acquire()")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            return False
        return True

    def release(self) -> None:
        """Stop being a user (closing the file drops the lock)."""
        if self._file is not None:
            self._file.close()
            self._file = None


def holders(path: Path) -> str:
    """The pids holding a flock on ``path`` (from /proc/locks), to name
    them in :class:`SharedServiceBusy`."""
    try:
        ino = os.stat(path).st_ino
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    pids = []
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  READ  1234 08:01:5678 0 EOF"
        if len(fields) >= 6 and fields[1] == "FLOCK" and \
                fields[5].rsplit(":", 1)[-1] == str(ino):
            pids.append(fields[4])
    return ", ".join(pids)
