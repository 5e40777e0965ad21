"""Runs the redirect triggers in the source nova-compute's migration
monitor.

Nova's monitor thread polls the libvirt job every 0.5 s. The driver hands
each poll to :meth:`TriggerMonitor.observe`, which only stores a progress
sample and, every ``[dcmigrate_auto] interval`` seconds when no
evaluation is running, starts one on a background worker: that is all the
monitor thread ever does here, so Nova's downtime steps and timeouts go on
as before. The worker reads the destination's service state, asks the
enabled triggers in order and acts on the first decision:

============  ============================================  ==============
decision      guard                                         outcome
============  ============================================  ==============
any           less than ``min_interval`` since the last     (skipped)
              decision or since a redirected attempt began
redirect      the re-pick finds no host                     ``continue``
redirect      ``dry_run``                                   ``dry_run``
redirect      ``max_redirects_per_migration`` reached       ``capped``
redirect      the run refuses it (switching over, busy)     ``refused``
redirect      otherwise: ``run.request`` (re-pick)          ``redirect``
continue      --                                            ``continue``
============  ============================================  ==============

Every outcome is published (:mod:`.report`) and kept in the monitor's
decision history for the instance.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

import nova.conf
from nova import objects
from nova import thread_pool_factory
from nova.virt.libvirt import driver as libvirt_driver
from oslo_log import log as logging
from oslo_utils import timeutils
from stevedore import named

from nova_dcmigrate.compute import exception as redirect_exception
from nova_dcmigrate.compute import records
from nova_dcmigrate.compute import run as run_state
import nova_dcmigrate.conf
from nova_dcmigrate.triggers import base
from nova_dcmigrate.triggers import progress as progress_mod
from nova_dcmigrate.triggers import report
from nova_dcmigrate.triggers import view

LOG = logging.getLogger(__name__)
CONF = nova_dcmigrate.conf.CONF
NOVA_CONF = nova.conf.CONF

#: Runs whose watch (and decision history) is kept.
WATCHES_KEPT = 100
#: Decisions kept per run.
DECISIONS_KEPT = 50


class _Watch:
    """Trigger state of one live migration run."""

    def __init__(self, context: Any, instance: Any, run: Any) -> None:
        self.context = context
        self.instance = instance
        self.run = run
        self.meter: progress_mod.RateMeter | None = None
        self.attempt = 0
        self.busy = False
        self.last_evaluation = -float("inf")
        self.evaluations = 0
        #: Monotonic time before which no decision is acted on.
        self.quiet_until = -float("inf")
        self.auto_redirects = 0
        self.memo: dict[str, dict[str, Any]] = {}
        self.decisions: collections.deque[report.Outcome] = (
            collections.deque(maxlen=DECISIONS_KEPT))


class TriggerMonitor:
    """The triggers of one nova-compute (one per driver).

    :param host: this compute's host name.
    :param report_client: callable returning the placement client.
    """

    def __init__(self, host: Any, report_client: Any) -> None:
        self._host = host
        self._report_client = report_client
        self._lock = threading.Lock()
        self._watches: collections.OrderedDict[str, _Watch] = (
            collections.OrderedDict())
        self._loaded: tuple[tuple[str, ...], list[base.RedirectTrigger]] = (
            (), [])

    @staticmethod
    def enabled() -> bool:
        return bool(CONF.dcmigrate_auto.enabled_triggers)

    # -- called from Nova's monitor thread -------------------------------

    def attempt_started(self, context: Any, instance: Any, run: Any,
                        data_gb: float) -> None:
        """A monitor for one attempt of ``run`` starts.

        :param data_gb: Nova's ``_live_migration_data_gb`` of the
            migration (its timeout is the completion timeout times this).
        """
        if not self.enabled():
            return
        now = time.monotonic()
        with self._lock:
            watch = self._watches.get(run.instance_uuid)
            if watch is None or watch.run is not run:
                watch = _Watch(context, instance, run)
                self._watches[run.instance_uuid] = watch
                while len(self._watches) > WATCHES_KEPT:
                    self._watches.popitem(last=False)
            self._watches.move_to_end(run.instance_uuid)
        watch.attempt += 1
        if watch.attempt > 1:
            watch.quiet_until = max(
                watch.quiet_until, now + CONF.dcmigrate_auto.min_interval)
        watch.meter = progress_mod.RateMeter(
            now, CONF.dcmigrate_auto.rate_window,
            progress_mod.nova_timeout(
                NOVA_CONF.libvirt.live_migration_completion_timeout,
                data_gb))

    def observe(self, run: Any, info: Any) -> None:
        """One job poll: store the sample, maybe start an evaluation.

        Never raises and never waits: it runs in Nova's monitor loop.
        """
        try:
            self._observe(run, info)
        except Exception:
            LOG.exception("Redirect triggers: observing a job poll failed")

    def _observe(self, run: Any, info: Any) -> None:
        if not self.enabled():
            return
        watch = self._watches.get(run.instance_uuid)
        if watch is None or watch.run is not run or watch.meter is None:
            return
        if info.type != libvirt_driver.libvirt.VIR_DOMAIN_JOB_UNBOUNDED:
            return
        now = time.monotonic()
        try:
            watch.meter.add(progress_mod.sample_from_job(now, info))
        except base.TriggerInputError as err:
            LOG.debug("Redirect triggers: %s", err)
        # Not while a redirect is requested, prepared or switched.
        if (watch.busy or
                now - watch.last_evaluation < CONF.dcmigrate_auto.interval
                or run.phase != run_state.RUNNING):
            return
        watch.busy = True
        watch.last_evaluation = now
        snapshot = watch.meter.progress()
        try:
            thread_pool_factory.spawn(self._evaluate, watch, snapshot)
        except Exception:
            watch.busy = False
            raise

    # -- the evaluation worker ---------------------------------------------

    def triggers(self) -> list[base.RedirectTrigger]:
        """The enabled triggers, loaded by stevedore (kept while the
        option is unchanged)."""
        names = tuple(CONF.dcmigrate_auto.enabled_triggers)
        if self._loaded[0] != names:
            manager: named.NamedExtensionManager[base.RedirectTrigger]
            manager = named.NamedExtensionManager(
                base.NAMESPACE, names=list(names), invoke_on_load=True,
                invoke_args=(CONF.dcmigrate_auto,), name_order=True,
                on_missing_entrypoints_callback=_missing,
                on_load_failure_callback=_load_failed)
            self._loaded = (names, [ext.obj for ext in manager
                                    if ext.obj is not None])
        return self._loaded[1]

    def _evaluate(self, watch: _Watch,
                  progress: base.Progress | None) -> None:
        try:
            run = watch.run
            inputs = base.Inputs(
                instance_uuid=run.instance_uuid,
                migration_uuid=run.migration.uuid, source=run.source,
                destinations=list(run.destinations), progress=progress,
                destination=view.destination_state(watch.context, run.dest),
                scheduler=view.NovaSchedulerView(
                    watch.context, watch.instance, run,
                    self._report_client(), require_agent=self._relays()),
                relays=self._relays(), memo=watch.memo)
            decision = None
            for trigger in self.triggers():
                try:
                    decision = trigger.evaluate(inputs)
                except (base.TriggerInputError,
                        base.SchedulerViewError) as err:
                    LOG.warning("Redirect trigger %(name)s skipped: "
                                "%(err)s", {"name": trigger.name,
                                            "err": err})
                    continue
                if decision is not None:
                    break
            if decision is not None:
                self._act(watch, inputs, decision)
        except Exception:
            LOG.exception("Redirect triggers: evaluation failed")
        finally:
            watch.evaluations += 1
            watch.busy = False

    @staticmethod
    def _relays() -> bool:
        return bool(CONF.dcmigrate_compute.transport == "agents")

    def _act(self, watch: _Watch, inputs: base.Inputs,
             decision: base.Decision) -> None:
        now = time.monotonic()
        if now < watch.quiet_until:
            LOG.debug("Redirect trigger %(name)s decided %(action)s within "
                      "min_interval; not acted on",
                      {"name": decision.trigger, "action": decision.action})
            return
        group = CONF.dcmigrate_auto
        evidence = dict(decision.evidence)
        summary = decision.summary
        candidate = decision.candidate
        redirect_id = None
        why: base.NotRedirected | redirect_exception.RedirectError | None
        if decision.action != base.REDIRECT:
            outcome = report.CONTINUED
            why = base.NoBetterHost(trigger=decision.trigger,
                                    destination=inputs.dest,
                                    reason=decision.summary)
        else:
            if candidate is None:
                try:
                    alt = inputs.scheduler.alternative()
                except base.SchedulerViewError as err:
                    LOG.warning("Redirect trigger %(name)s: %(err)s; not "
                                "acted on", {"name": decision.trigger,
                                             "err": err})
                    return
                candidate = alt.host if alt is not None else None
            evidence["candidate"] = candidate
            why = None
            if candidate is None:
                outcome = report.CONTINUED
                summary += "; the re-pick found no other host, continuing"
                why = base.NoBetterHost(
                    trigger=decision.trigger, destination=inputs.dest,
                    reason="the re-pick found no other host")
            elif group.dry_run:
                outcome = report.DRY_RUN
                why = base.DryRun(trigger=decision.trigger)
            elif watch.auto_redirects >= group.max_redirects_per_migration:
                outcome = report.CAPPED
                summary += ("; %d automatic redirects already, the limit"
                            % watch.auto_redirects)
                why = base.RedirectCapped(trigger=decision.trigger,
                                          count=watch.auto_redirects)
            else:
                try:
                    redirect_id = self._request(watch, decision, summary,
                                                evidence)
                    outcome = report.REDIRECTED
                    watch.auto_redirects += 1
                except redirect_exception.RedirectError as err:
                    outcome = report.REFUSED
                    summary += "; refused: %s" % err
                    why = err
        if why is not None:
            redirect_id = _record_not_redirected(
                watch.run, decision.trigger, inputs.dest, candidate,
                summary, evidence, why)
        watch.quiet_until = now + group.min_interval
        run = watch.run
        result = report.Outcome(
            instance_uuid=run.instance_uuid,
            migration_uuid=run.migration.uuid, source=run.source,
            destination=inputs.dest, trigger=decision.trigger,
            outcome=outcome, summary=summary, evidence=evidence,
            at=timeutils.utcnow().isoformat() + "Z", candidate=candidate,
            redirect_id=redirect_id)
        watch.decisions.appendleft(result)
        report.publish(watch.context, str(self._host()), result)

    def _request(self, watch: _Watch, decision: base.Decision,
                 summary: str, evidence: dict[str, Any]) -> str | None:
        # The same validation as a user's request (RedirectEndpoint),
        # then the re-pick by the monitor thread as for host=None.
        run = watch.run
        migration = objects.Migration.get_by_uuid(watch.context,
                                                  run.migration.uuid)
        with run.lock:
            run.check_redirectable(migration, None)
            record = run.request(
                None, requested_by=records.trigger_requester(
                    decision.trigger),
                reason=summary, evidence=evidence, context=watch.context)
        return str(record.id)

    # -- inspection ---------------------------------------------------------

    def decisions(self, instance_uuid: str) -> list[dict[str, Any]]:
        """The recorded decisions for the instance's latest run, newest
        first."""
        watch = self._watches.get(instance_uuid)
        if watch is None:
            return []
        return [d.to_dict() for d in watch.decisions]

    def evaluations(self, instance_uuid: str) -> int:
        """How many evaluations ran for the instance's latest run."""
        watch = self._watches.get(instance_uuid)
        return watch.evaluations if watch is not None else 0


def _record_not_redirected(run: Any, trigger: str, dest: str,
                           candidate: str | None, summary: str,
                           evidence: dict[str, Any],
                           why: BaseException) -> str | None:
    # A decision that did not become a redirect is listed with the
    # redirects all the same (state failed, error = why).
    history = getattr(run, "history", None)
    if history is None:
        return None
    record = records.RedirectRecord(
        server_id=run.instance_uuid, migration_id=run.migration.uuid,
        source=run.source, old_destination=dest, new_destination=candidate,
        requested_by=records.trigger_requester(trigger), reason=summary,
        evidence=evidence)
    record.transition(records.RedirectState.FAILED, error=why)
    history.add(record)
    return str(record.id)


def _missing(names: Any) -> None:
    LOG.error("[dcmigrate_auto] enabled_triggers names unknown redirect "
              "triggers %(names)s (entry point group %(group)s)",
              {"names": sorted(names), "group": base.NAMESPACE})


def _load_failed(manager: Any, entrypoint: Any,
                 err: BaseException) -> None:
    LOG.error("Loading redirect trigger %(name)s failed: %(err)s",
              {"name": entrypoint.name, "err": err})
