"""RabbitMQ for the lab: the real broker that carries agent RPC.

Why: oslo.messaging between processes is tested against the real thing.
Each lab run gets its own vhost and user, so concurrent runs never see each
other's RPC traffic, and both are removed at the end.  The broker is only
stopped if this process started it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time

from oslo_log import log as logging

from nova_dcmigrate.lab.exception import LabError

LOG = logging.getLogger(__name__)

READY_TIMEOUT = 90.0


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
    """A running broker, started on demand."""

    def __init__(self) -> None:
        self.started_here = False

    def ensure_running(self) -> RabbitBroker:
        if is_running():
            return self
        if shutil.which("rabbitmq-server") is None:
            raise LabError("rabbitmq-server is not installed; run "
                           "tools/install-system-deps.sh")
        LOG.info("starting rabbitmq-server")
        subprocess.run(["rabbitmq-server", "-detached"], check=True,
                       capture_output=True)
        self.started_here = True
        deadline = time.monotonic() + READY_TIMEOUT
        while not is_running():
            if time.monotonic() > deadline:
                raise LabError("rabbitmq-server did not become ready in "
                               "%.0f s" % READY_TIMEOUT)
            time.sleep(1)
        return self

    def stop(self) -> None:
        if not self.started_here:
            return
        _ctl("stop", check=False)
        # epmd outlives the broker; stop it only since we started both.
        subprocess.run(["epmd", "-kill"], check=False, capture_output=True)
        self.started_here = False


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
    """Honour DCMIGRATE_RABBIT_EXTERNAL=1 (broker managed by the caller)."""
    b = RabbitBroker()
    if os.environ.get("DCMIGRATE_RABBIT_EXTERNAL") == "1" and is_running():
        return b
    return b.ensure_running()
