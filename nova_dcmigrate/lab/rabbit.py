"""RabbitMQ for the lab: the real broker that carries agent RPC.

Why: oslo.messaging between processes is tested against the real thing.
Each lab run gets its own vhost and user, so concurrent runs never see each
other's RPC traffic, and both are removed at the end.  The broker is shared
by concurrent runs: each holds a shared lock on :data:`LOCK_PATH` while it
uses it (:mod:`nova_dcmigrate.lab.shared_use`), and the run that started it
stops it at its end only if nobody else holds that lock.  A broker the lab
did not start (a system service) is never stopped.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

from oslo_log import log as logging

from nova_dcmigrate.lab.exception import LabError
from nova_dcmigrate.lab.shared_use import SharedUse

LOG = logging.getLogger(__name__)

READY_TIMEOUT = 90.0
#: Held shared by every lab process using the broker (see SharedUse).
LOCK_PATH = Path("/run/nova-dcmigrate/rabbitmq.lock")


def _ctl(*args: str, check: bool = True,
         timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["rabbitmqctl", "-q", *args], check=check,
                          capture_output=True, text=True, timeout=timeout)


def is_running() -> bool:
    if shutil.which("rabbitmqctl") is None:
        return False
    try:
        return _ctl("status", check=False, timeout=30).returncode == 0
    except subprocess.TimeoutExpired:
        return False


class RabbitBroker:
    """The shared broker, started on demand, used under a shared lock."""

    def __init__(self, lock_path: Path | None = None) -> None:
        self.started_here = False
        self.use = SharedUse(lock_path or LOCK_PATH)

    # The broker itself; the lock logic is the same for any service.
    def _running(self) -> bool:
        return is_running()

    def _start(self) -> None:
        if shutil.which("rabbitmq-server") is None:
            raise LabError("rabbitmq-server is not installed; run "
                           "tools/install-system-deps.sh")
        LOG.info("starting rabbitmq-server")
        subprocess.run(["rabbitmq-server", "-detached"], check=True,
                       capture_output=True)

    def _stop(self) -> None:
        _ctl("stop", check=False)
        # epmd outlives the broker; stop it only since we started both.
        subprocess.run(["epmd", "-kill"], check=False, capture_output=True)

    def acquire(self) -> RabbitBroker:
        """Use the broker as it is (running or not), without starting it:
        only protects it from being stopped by another run."""
        self.use.acquire()
        return self

    def ensure_running(self) -> RabbitBroker:
        """Use the broker, starting it first if it is down."""
        self.use.acquire()
        try:
            if self._running():
                return self
            with self.use.starting():
                if self._running():
                    return self
                self._start()
                self.started_here = True
                deadline = time.monotonic() + READY_TIMEOUT
                while not self._running():
                    if time.monotonic() > deadline:
                        raise LabError("rabbitmq-server did not become "
                                       "ready in %.0f s" % READY_TIMEOUT)
                    time.sleep(1)
            return self
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop using the broker; stop it too if this process started it
        and no other lab process uses it."""
        if not self.use.held:
            return
        try:
            if self.started_here:
                if self.use.sole_user():
                    self._stop()
                else:
                    LOG.info("rabbitmq-server left running: another lab "
                             "run uses it")
        finally:
            self.started_here = False
            self.use.release()


class RabbitVhost:
    """A private vhost + user for one lab run."""

    def __init__(self, run_id: str) -> None:
        self.vhost = "dcm-%s" % run_id
        self.user = "dcm-%s" % run_id
        self.password = secrets.token_hex(16)
        self.created = False

    def create(self) -> RabbitVhost:
        _ctl("add_vhost", self.vhost)
        self.created = True
        _ctl("add_user", self.user, self.password)
        _ctl("set_permissions", "-p", self.vhost, self.user, ".*", ".*",
             ".*")
        return self

    def url(self, address: str) -> str:
        return "rabbit://%s:%s@%s:5672/%s" % (self.user, self.password,
                                              address, self.vhost)

    def delete(self) -> None:
        if not self.created:
            return
        _ctl("delete_user", self.user, check=False)
        _ctl("delete_vhost", self.vhost, check=False)
        self.created = False


def broker_from_env() -> RabbitBroker:
    """Honour DCMIGRATE_RABBIT_EXTERNAL=1 (broker managed by the caller:
    used, never started nor stopped here, while it runs)."""
    b = RabbitBroker()
    if os.environ.get("DCMIGRATE_RABBIT_EXTERNAL") == "1":
        b.acquire()
        if is_running():
            return b
    return b.ensure_running()
