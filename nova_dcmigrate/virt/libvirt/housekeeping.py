"""Background work of the driver, kept off nova-compute's hot paths.

* :class:`AgentProbe` -- whether the local dcmigrate agent answers its
  RPC ``ping``, for the placement trait. ``update_provider_tree`` runs
  under Nova's ``COMPUTE_RESOURCE_SEMAPHORE`` (which blocks claims), so it
  only reads the cached answer; the ping (up to ``agent_ping_timeout``)
  runs once in ``init_host`` and then in the housekeeping thread.
* :class:`Housekeeper` -- one daemon thread per driver running a callable
  every ``housekeeping_interval`` seconds (agent probe, retries of failed
  redirect clean-up steps), stopped by ``cleanup_host``.
* :class:`StoppedJobLogFilter` -- Nova's ``_live_migration_operation``
  logs "Live Migration failure" at ERROR when ``migrateToURI3`` raises,
  also when a redirect stopped the job on purpose. While (and only while)
  the attempt's thread belongs to a run that is stopping its job, that
  record is lowered to INFO: operators alert on ERROR.
"""

from __future__ import annotations

import logging as std_logging
import threading
import time
from collections.abc import Callable
from typing import Any

from oslo_log import log as logging

LOG = logging.getLogger(__name__)

#: The logger and function of Nova's line lowered by the filter.
NOVA_DRIVER_LOGGER = "nova.virt.libvirt.driver"
NOVA_OPERATION = "_live_migration_operation"


class AgentProbe:
    """Cached answer of the local agent to a ping.

    :param ping: pings the agent, raising if it does not answer.
    :param host: the host name (for the log lines).
    :param trait: the trait's name (for the log lines).
    """

    def __init__(self, ping: Callable[[], Any], host: Callable[[], str],
                 trait: str) -> None:
        self._ping = ping
        self._host = host
        self._trait = trait
        self._lock = threading.Lock()
        #: (time.monotonic() of the last ping, whether the agent answered).
        self.seen: tuple[float, bool] | None = None

    def answers(self) -> bool:
        """The last answer (False before the first ping); never pings."""
        seen = self.seen
        return bool(seen is not None and seen[1])

    def due(self, interval: float) -> bool:
        seen = self.seen
        return seen is None or time.monotonic() - seen[0] >= interval

    def refresh(self) -> bool:
        """Ping now; log a change (one WARNING when it stops answering)."""
        with self._lock:
            seen = self.seen
            host = self._host()
            try:
                self._ping()
                answers = True
            except Exception as err:  # noqa: BLE001 - any silence counts
                answers = False
                if seen is None or seen[1]:
                    LOG.warning("The dcmigrate agent of host %(host)s does "
                                "not answer; trait %(trait)s removed until "
                                "it does: %(err)s",
                                {"host": host, "trait": self._trait,
                                 "err": err})
                else:
                    LOG.debug("The dcmigrate agent of host %(host)s still "
                              "does not answer: %(err)s",
                              {"host": host, "err": err})
            else:
                if seen is not None and not seen[1]:
                    LOG.info("The dcmigrate agent of host %(host)s answers "
                             "again; reporting trait %(trait)s",
                             {"host": host, "trait": self._trait})
            self.seen = (time.monotonic(), answers)
            return answers


class Housekeeper:
    """Runs ``work`` every ``interval()`` seconds in a daemon thread."""

    def __init__(self, work: Callable[[], None],
                 interval: Callable[[], float], name: str) -> None:
        self._work = work
        self._interval = interval
        self._name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=self._name,
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval()):
            try:
                self._work()
            except Exception:  # noqa: BLE001 - the loop must go on
                LOG.exception("dcmigrate housekeeping failed")


class StoppedJobLogFilter(std_logging.Filter):
    """Lowers Nova's "Live Migration failure" ERROR of a stopped job.

    ``stopping`` is set per thread by the driver around each attempt: a
    callable telling whether that attempt's job is being stopped on
    purpose (a redirect, or an abort deferred during one).
    """

    def __init__(self) -> None:
        super().__init__()
        self.local = threading.local()

    def filter(self, record: std_logging.LogRecord) -> bool:
        if (record.levelno == std_logging.ERROR and
                record.funcName == NOVA_OPERATION):
            stopping = getattr(self.local, "stopping", None)
            if stopping is not None and stopping():
                record.levelno = std_logging.INFO
                record.levelname = std_logging.getLevelName(
                    std_logging.INFO)
                record.msg = "%s (the job was stopped for a redirect)" % (
                    record.msg,)
        return True


_FILTER: StoppedJobLogFilter | None = None
_FILTER_LOCK = threading.Lock()


def stopped_job_filter() -> StoppedJobLogFilter:
    """The process's filter, installed on Nova's driver logger once."""
    global _FILTER
    with _FILTER_LOCK:
        if _FILTER is None:
            _FILTER = StoppedJobLogFilter()
            std_logging.getLogger(NOVA_DRIVER_LOGGER).addFilter(_FILTER)
        return _FILTER
