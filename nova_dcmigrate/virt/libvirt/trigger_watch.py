"""Redirect triggers for the Nova-free libvirt controller.

:class:`TriggerWatch` runs the shipped triggers
(:mod:`nova_dcmigrate.triggers`) against a
:class:`~.controller.RedirectableMigration`: it polls the source domain's
job statistics every ``poll`` seconds (as Nova's monitor does), measures
the attempt with the same :class:`~nova_dcmigrate.triggers.progress.
RateMeter`, evaluates every ``interval`` seconds and redirects through
``RedirectableMigration.redirect``. It runs in its own thread; the
controller's attempt threads never wait for it. Without Nova there is no
scheduler or service record: the caller supplies the re-pick
(``pick``) and, if it wants, the destination's service state.
"""

from __future__ import annotations

import threading
import time
import types
from collections.abc import Callable
from typing import Any

import libvirt
from oslo_log import log as logging

from nova_dcmigrate.triggers import base
from nova_dcmigrate.triggers import progress as progress_mod
from nova_dcmigrate.virt.libvirt import controller

LOG = logging.getLogger(__name__)


class _PickView:
    """:class:`~nova_dcmigrate.triggers.base.SchedulerView` from
    callables."""

    def __init__(self, pick: Callable[[list[str]], base.Alternative | None],
                 fits: Callable[[str], bool] | None,
                 destinations: list[str]) -> None:
        self._pick = pick
        self._fits = fits
        self._destinations = destinations

    def destination_fits(self) -> bool:
        return True if self._fits is None else self._fits(
            self._destinations[-1])

    def alternative(self) -> base.Alternative | None:
        return self._pick(list(self._destinations))


class TriggerWatch:
    """Evaluate triggers on a running controller migration; redirect.

    :param migration: a started ``RedirectableMigration``.
    :param triggers: trigger objects (the shipped classes, configured).
    :param pick: destinations so far -> the host a re-pick would choose.
    :param timeout: seconds after an attempt's start at which the caller
        would give up (``Progress.nova_timeout``), or None.
    :param max_redirects: most redirects this watch makes.
    """

    def __init__(self, migration: Any, triggers: list[base.RedirectTrigger],
                 pick: Callable[[list[str]], base.Alternative | None], *,
                 interval: float = 1.0, poll: float = 0.5,
                 window: float = 5.0, timeout: float | None = None,
                 relays: bool = True, max_redirects: int = 1,
                 fits: Callable[[str], bool] | None = None,
                 service: Callable[[str], base.DestinationState | None]
                 | None = None) -> None:
        self.migration = migration
        self.triggers = triggers
        self.pick = pick
        self.fits = fits
        self.service = service
        self.interval, self.poll, self.window = interval, poll, window
        self.timeout = timeout
        self.relays = relays
        self.max_redirects = max_redirects
        self.decisions: list[base.Decision] = []
        self.redirects = 0
        self.evaluations = 0
        self._memo: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="dcmigrate-trigger-watch")

    def start(self) -> TriggerWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def _run(self) -> None:
        meter: progress_mod.RateMeter | None = None
        attempt = -1
        last_eval = time.monotonic()
        while not self._stop.wait(self.poll):
            m = self.migration
            if m.state.value != "running":
                if m.state.value in ("completed", "failed", "aborted"):
                    return
                continue
            if m.current.number != attempt:
                attempt = m.current.number
                meter = progress_mod.RateMeter(
                    time.monotonic(), self.window, self.timeout)
            assert meter is not None
            try:
                stats = m.dom.jobStats()
            except libvirt.libvirtError:
                continue
            if stats.get("type") != libvirt.VIR_DOMAIN_JOB_UNBOUNDED:
                continue
            try:
                meter.add(progress_mod.sample_from_job(
                    time.monotonic(), types.SimpleNamespace(**stats)))
            except base.TriggerInputError as err:
                LOG.debug("trigger watch: %s", err)
                continue
            if time.monotonic() - last_eval < self.interval:
                continue
            last_eval = time.monotonic()
            self._evaluate(meter.progress())

    def _evaluate(self, progress: base.Progress | None) -> None:
        m = self.migration
        dests = [a.host.name for a in m.attempts]
        inputs = base.Inputs(
            instance_uuid=m.dom.UUIDString(), migration_uuid=m.migration_id,
            source=m.source.name, destinations=dests, progress=progress,
            destination=(self.service(dests[-1]) if self.service
                         else None),
            scheduler=_PickView(self.pick, self.fits, dests),
            relays=self.relays, memo=self._memo)
        self.evaluations += 1
        for trigger in self.triggers:
            try:
                decision = trigger.evaluate(inputs)
            except base.TriggerInputError as err:
                LOG.debug("trigger watch: %s skipped: %s", trigger.name, err)
                continue
            if decision is None:
                continue
            self.decisions.append(decision)
            LOG.info("trigger watch: %(name)s %(action)s: %(summary)s",
                     {"name": decision.trigger, "action": decision.action,
                      "summary": decision.summary})
            target = decision.candidate
            if decision.action == base.REDIRECT and target is None:
                alt = inputs.scheduler.alternative()
                target = alt.host if alt is not None else None
            if (decision.action == base.REDIRECT and target and
                    self.redirects < self.max_redirects):
                self.redirects += 1
                try:
                    m.redirect(target)
                except controller.ControllerError as err:
                    # E.g. switchover started: the migration goes on.
                    LOG.warning("trigger watch: redirect to %(host)s "
                                "refused: %(err)s",
                                {"host": target, "err": err})
            return
