"""Automatic redirects by the redirect triggers, on Nova's harness.

The deployment of ``test_redirect.py`` (real nova-api, conductor,
scheduler, placement; computes ``src``, ``dest1``, ``dest2``, ``dest3``
with DCMigrateLibvirtDriver on fakelibvirt), with ``[dcmigrate_auto]``
triggers enabled on the source. Nobody calls the redirect API here: the
triggers in the source's migration monitor decide.

What fakelibvirt replaces, besides the migration job of
``test_redirect.py``: libvirt's job statistics. While an attempt is held,
``jobStats`` reports a running job (``VIR_DOMAIN_JOB_UNBOUNDED``) with
counters from a per-test profile (bytes sent and remaining as a function
of the attempt's age), as libvirt reports a running migration; no memory
moves. Everything the triggers read besides that is real: the service
records and servicegroup, the scheduler with placement, Nova's monitor
loop, and the redirect orchestration they hand the decision to.
"""

from __future__ import annotations

import time
from typing import Any
from collections.abc import Callable

import fixtures
from nova.tests.fixtures import libvirt as fakelibvirt

from tests.functional.nova import test_redirect

MIB = 1024 * 1024
GIB = 1024 * MIB
TOTAL = 2 * GIB
TRAIT = "CUSTOM_TRIGGER_FIT"

#: (age of the attempt in s) -> (bytes sent, bytes remaining).
Profile = Callable[[float], tuple[int, int]]


def healthy(age: float) -> tuple[int, int]:
    """100 MiB/s, converging: done in ~20 s."""
    sent = int(100 * MIB * age)
    return sent, max(0, TOTAL - sent)


def slowed(age: float) -> tuple[int, int]:
    """200 MiB/s for 1 s, then 2 MiB/s: hours to go."""
    fast = min(age, 1.0)
    sent = int(200 * MIB * fast + 2 * MIB * max(0.0, age - 1.0))
    return sent, TOTAL - sent


class TriggerTestBase(test_redirect.RedirectTestBase):
    """Triggers evaluated every 0.5 s; job statistics from a profile."""

    def setUp(self) -> None:
        super().setUp()
        self.flags(interval=0.5, min_interval=0.0, rate_window=2.0,
                   too_slow_min_elapsed=2.0, too_slow_redirect_overhead=1.0,
                   group="dcmigrate_auto")
        self.flags(notification_format="versioned", group="notifications")
        #: Profile of attempt n (1-based); the last one for later ones.
        self.profiles: list[Profile] = [healthy]
        self._started: dict[int, float] = {}
        self.useFixture(fixtures.MonkeyPatch(
            "nova.tests.fixtures.libvirt.Domain.jobStats", self._job_stats))
        self.monitor = self.computes["src"].driver.dcmigrate_triggers

    def _job_stats(self, domain: Any, flags: int = 0) -> dict[str, Any]:
        if domain._job_type != fakelibvirt.VIR_DOMAIN_JOB_NONE:
            return {"type": domain._job_type}
        with self.cond:
            held = [(n, a) for n, a in enumerate(self.attempts, 1)
                    if not a.release.is_set()]
        if not held:
            return {"type": domain._job_type}
        number = held[-1][0]
        start = self._started.setdefault(number, time.monotonic())
        profile = self.profiles[min(number, len(self.profiles)) - 1]
        sent, remaining = profile(time.monotonic() - start)
        return {"type": fakelibvirt.VIR_DOMAIN_JOB_UNBOUNDED,
                "time_elapsed": int((time.monotonic() - start) * 1000),
                "data_total": TOTAL, "data_processed": sent,
                "data_remaining": remaining, "memory_total": TOTAL,
                "memory_processed": sent, "memory_remaining": remaining}

    def _enable(self, *names: str, **opts: Any) -> None:
        self.flags(enabled_triggers=list(names), group="dcmigrate_auto")
        if opts:
            self.flags(group="dcmigrate_auto", **opts)

    def _set_service(self, host: str, status: str) -> None:
        service = self.admin_api.get_services(
            binary="nova-compute", host=host)[0]
        self.admin_api.put_service(service["id"], {"status": status})

    def _decisions(self) -> list[dict[str, Any]]:
        return self.monitor.decisions(self.server["id"])

    def _wait_decision(self, outcome: str, count: int = 1
                       ) -> dict[str, Any]:
        deadline = time.monotonic() + test_redirect.WAIT_S
        while True:
            found = [d for d in self._decisions() if d["outcome"] == outcome]
            if len(found) >= count:
                return found[0]
            if time.monotonic() > deadline:
                self.fail("no %s decision; decisions: %s"
                          % (outcome, self._decisions()))
            time.sleep(0.1)

    def _wait_evaluations(self, count: int) -> None:
        deadline = time.monotonic() + test_redirect.WAIT_S
        while self.monitor.evaluations(self.server["id"]) < count:
            if time.monotonic() > deadline:
                self.fail("only %d evaluations" %
                          self.monitor.evaluations(self.server["id"]))
            time.sleep(0.1)

    def _events(self) -> list[str]:
        names = []
        for action in self.admin_api.get_instance_actions(self.server["id"]):
            details = self.admin_api.get_instance_action_details(
                self.server["id"], action["request_id"])
            names += [e["event"] for e in details.get("events", [])]
        return names

    def _assert_visible(self, decision: dict[str, Any]) -> None:
        """Event, notification and redirect record exist."""
        name = "dcmigrate_trigger %s %s %s: %s" % (
            decision["trigger"], decision["outcome"], decision["at"],
            decision["summary"])
        self.assertIn(name[:255], self._events())
        instance, _ = self._objects()
        records = {r["id"]: r for r in self.client.list_redirects(
            self.ctxt, instance, "src")}
        record = records[decision["redirect_id"]]
        self.assertEqual(
            ("trigger:%s" % decision["trigger"], decision["evidence"],
             decision["destination"]),
            (record["requested_by"], record["evidence"],
             record["old_destination"]))
        if decision["outcome"] != "redirect":
            # Recorded, not redirected.
            codes = {"dry_run": "DryRun", "capped": "RedirectCapped",
                     "continue": "NoBetterHost"}
            self.assertEqual(("failed", codes[decision["outcome"]]),
                             (record["state"], record["error"]["code"]))
        event_type = "dcmigrate.redirect_trigger.%s" % decision["outcome"]
        notes = self.notifier.wait_for_versioned_notifications(event_type)
        data = notes[0]["payload"]["nova_object.data"]
        self.assertEqual(
            (decision["trigger"], self.server["id"], decision["evidence"]),
            (data["trigger"], data["instance_uuid"], data["evidence"]))
        self.assertEqual("1.0", notes[0]["payload"]["nova_object.version"])
        self.assertEqual("nova-compute:src", notes[0]["publisher_id"])


class TriggerTest(TriggerTestBase):

    def test_disabled_destination_is_left_without_api_call(self) -> None:
        self._enable("destination_disabled")
        self._boot()
        self._start_migration("dest1")
        self._set_service("dest1", "disabled")

        attempt = self._wait_attempt(2)
        self.assertIn(attempt.host, ("dest2", "dest3"))
        self.assertTrue(self.attempts[0].aborted)
        decision = self._wait_decision("redirect")
        self.assertEqual(("destination_disabled", "dest1", "disabled"),
                         (decision["trigger"], decision["destination"],
                          decision["evidence"]["state"]))
        self._assert_visible(decision)
        self._wait_state("running")
        other = ({"dest2", "dest3"} - {attempt.host}).pop()
        self._finish(attempt, attempt.host)
        self._assert_finished_on(attempt.host, ("src", "dest1", other))

    def test_unfit_destination_is_left(self) -> None:
        self._enable("destination_unfit", destination_unfit_confirmations=2)
        self.placement.put("/traits/%s" % TRAIT, None, version="1.6")
        for host in test_redirect.HOSTS:
            rp = self.rp[host]
            self._set_provider_traits(
                rp, self._get_provider_traits(rp) + [TRAIT])
        flavor = self._create_flavor(
            memory_mb=512, vcpu=1, disk=1, ephemeral=0,
            extra_spec={"trait:%s" % TRAIT: "required"})
        self.idle_usage = self._hypervisor_usage("dest3")
        self.server = self._create_server(
            host="src", flavor_id=flavor, networks="none")
        self._start_migration("dest1")
        # Healthy while it still fits: the checks run, nothing happens.
        self._wait_evaluations(3)
        self.assertEqual((1, []), (len(self.attempts), self._decisions()))

        self._set_provider_traits(
            self.rp["dest1"],
            [t for t in self._get_provider_traits(self.rp["dest1"])
             if t != TRAIT])
        attempt = self._wait_attempt(2)
        self.assertIn(attempt.host, ("dest2", "dest3"))
        decision = self._wait_decision("redirect")
        self.assertEqual(("destination_unfit", 2),
                         (decision["trigger"],
                          decision["evidence"]["failed_checks"]))
        self._assert_visible(decision)
        self._wait_state("running")
        self._finish(attempt, attempt.host)

    def test_too_slow_fires_on_slowed_migration(self) -> None:
        # Nova would abort after 15 s/GiB x 2 GiB = 30 s.
        self.flags(live_migration_completion_timeout=15, group="libvirt")
        # Judged once the 2 s rate window holds only the slow phase.
        self._enable("too_slow", too_slow_min_elapsed=4.0)
        self.profiles = [slowed, healthy]
        self._boot()
        self._start_migration("dest1")

        attempt = self._wait_attempt(2)
        self.assertIn(attempt.host, ("dest2", "dest3"))
        decision = self._wait_decision("redirect")
        ev = decision["evidence"]
        self.assertEqual((30.0, attempt.host),
                         (ev["deadline_s"], decision["candidate"]))
        self.assertGreater(ev["projected_remaining_s"], 30)
        self.assertLess(ev["candidate_estimate_s"] * 1.5,
                        ev["projected_remaining_s"])
        self.assertAlmostEqual(2 * MIB, ev["transfer_rate"],
                               delta=0.5 * MIB)
        self._assert_visible(decision)
        self._wait_state("running")
        self._finish(attempt, attempt.host)
        self.assertEqual(1, len(self._decisions()))

    def test_too_slow_quiet_on_healthy_migration(self) -> None:
        self.flags(live_migration_completion_timeout=15, group="libvirt")
        self._enable("too_slow")
        self._boot()
        self._start_migration("dest1")
        # Past too_slow_min_elapsed (2 s), with rates measured.
        self._wait_evaluations(8)
        self.assertEqual((1, []), (len(self.attempts), self._decisions()))
        self._finish(self.attempts[0], "dest1")

    def test_dry_run_changes_nothing_but_records(self) -> None:
        self._enable("destination_disabled", dry_run=True, min_interval=2.0)
        self._boot()
        self._start_migration("dest1")
        self._set_service("dest1", "disabled")

        decision = self._wait_decision("dry_run")
        self.assertIn(decision["candidate"], ("dest2", "dest3"))
        self._assert_visible(decision)
        self._wait_evaluations(
            self.monitor.evaluations(self.server["id"]) + 3)
        self.assertEqual(1, len(self.attempts))
        self.assertFalse(self.attempts[0].aborted)
        status = self._status()
        self.assertEqual((0, "running", None),
                         (status["redirects"], status["state"],
                          status["last_error"]))
        self._set_service("dest1", "enabled")
        self._finish(self.attempts[0], "dest1")
        self._assert_finished_on("dest1", ("src", "dest2", "dest3"))

    def test_per_migration_cap(self) -> None:
        self._enable("destination_disabled", max_redirects_per_migration=1)
        self._boot()
        self._start_migration("dest1")
        self._set_service("dest1", "disabled")
        second = self._wait_attempt(2)
        self._wait_state("running")
        self._set_service(second.host, "disabled")

        capped = self._wait_decision("capped")
        self.assertEqual(second.host, capped["destination"])
        self._assert_visible(capped)
        self.assertEqual(2, len(self.attempts))
        self.assertEqual(1, self._status()["redirects"])
        self._finish(second, second.host)

    def test_nothing_enabled_nothing_happens(self) -> None:
        self._boot()
        self._start_migration("dest1")
        self._set_service("dest1", "disabled")
        time.sleep(3)
        self.assertEqual((0, [], 1),
                         (self.monitor.evaluations(self.server["id"]),
                          self._decisions(), len(self.attempts)))
        self.assertFalse(any(e.startswith("dcmigrate_trigger")
                             for e in self._events()))
        self._set_service("dest1", "enabled")
        self._finish(self.attempts[0], "dest1")
