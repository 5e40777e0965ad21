"""Clean-up steps of a redirect that failed, kept until they succeed.

After a redirect stopped the job to the old destination, that host's
volume attachments, domain, port bindings, claims and placement
allocation must go; a failure there must neither stop the redirect (the
guest is fine on the source and goes on to the new host) nor be lost in a
WARNING: a leaked allocation blocks capacity until someone notices.
:class:`CleanupQueue` runs each step once inline; a failed step is logged
at ERROR, recorded (visible in the run's ``cleanup_pending`` status) and
retried by :meth:`CleanupQueue.retry`, which the driver's periodic
housekeeping calls, until it succeeds or ``cleanup_retries`` is used up
(then an ERROR says what is left to do by hand).

Steps are in memory; the hosts they concern are also in the run's
persisted record (:mod:`.journal`), so a restarted source releases those
hosts again (:mod:`.restart`) and retries what fails through this queue.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

from oslo_log import log as logging

LOG = logging.getLogger(__name__)


@dataclasses.dataclass
class CleanupStep:
    """One clean-up step of a redirect (an idempotent callable)."""

    instance_uuid: str
    migration_uuid: str
    host: str
    what: str
    fn: Callable[[], None]
    tries: int = 0
    last_error: str | None = None
    next_try: float = 0.0
    #: "pending" until it succeeded ("done") or was given up
    #: ("abandoned": left for the operator).
    state: str = "pending"

    def describe(self) -> dict[str, Any]:
        """The step as the redirect status reports it."""
        return {"host": self.host, "step": self.what, "tries": self.tries,
                "error": self.last_error, "state": self.state}


class CleanupQueue:
    """Runs clean-up steps; keeps and retries the ones that fail.

    :param retries: further tries of a failed step before giving up.
    :param interval: seconds between two tries of a step.
    """

    def __init__(self, retries: int, interval: float) -> None:
        self.retries = retries
        self.interval = interval
        self._lock = threading.Lock()
        self._steps: list[CleanupStep] = []

    def run(self, step: CleanupStep) -> bool:
        """Run ``step`` now; keep it for :meth:`retry` if it fails.

        :returns: whether it succeeded.
        """
        if self._try(step):
            step.state = "done"
            return True
        LOG.error("Redirect of live migration %(mig)s: %(what)s failed: "
                  "%(err)s; retried every %(iv)d s (%(n)d times)",
                  {"mig": step.migration_uuid, "what": step.what,
                   "err": step.last_error, "iv": self.interval,
                   "n": self.retries}, instance_uuid=step.instance_uuid)
        with self._lock:
            self._steps.append(step)
        return False

    def _try(self, step: CleanupStep) -> bool:
        step.tries += 1
        try:
            step.fn()
        except Exception as err:  # noqa: BLE001 - kept and retried
            step.last_error = "%s: %s" % (type(err).__name__, err)
            step.next_try = time.monotonic() + self.interval
            LOG.debug("Clean-up step failed", exc_info=True)
            return False
        return True

    def pending(self, instance_uuid: str | None = None) -> list[CleanupStep]:
        """Steps still to be done (of one instance, or all)."""
        with self._lock:
            return [s for s in self._steps if instance_uuid is None or
                    s.instance_uuid == instance_uuid]

    def retry(self, now: float | None = None) -> int:
        """Retry every step that is due; return how many are left.

        Called periodically (the driver's housekeeping).
        """
        now = time.monotonic() if now is None else now
        for step in self.pending():
            if step.next_try > now:
                continue
            if self._try(step):
                step.state = "done"
                LOG.info("Redirect of live migration %(mig)s: %(what)s "
                         "done after %(n)d tries",
                         {"mig": step.migration_uuid, "what": step.what,
                          "n": step.tries}, instance_uuid=step.instance_uuid)
                self._drop(step)
            elif step.tries > self.retries:
                step.state = "abandoned"
                LOG.error("Redirect of live migration %(mig)s: giving up "
                          "%(what)s after %(n)d tries (%(err)s); clean it "
                          "up by hand", {"mig": step.migration_uuid,
                                         "what": step.what, "n": step.tries,
                                         "err": step.last_error},
                          instance_uuid=step.instance_uuid)
                self._drop(step)
        return len(self.pending())

    def _drop(self, step: CleanupStep) -> None:
        with self._lock:
            if step in self._steps:
                self._steps.remove(step)
