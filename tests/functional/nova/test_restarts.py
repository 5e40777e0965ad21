"""nova-compute restarting in the middle of a redirect, on Nova's harness.

Same world as ``test_redirect.py`` (real nova-api, conductor, scheduler,
placement, the Neutron and Cinder fixtures, four computes running
DCMigrateLibvirtDriver on fakelibvirt, migration attempts held by the
``migrateToURI3`` stub). A restart is Nova's own
``restart_compute_service``: the service stops and a new
``ComputeManager`` and driver start for the same host, with the same
fakelibvirt connection (the domains survive, as on a real host).

What the harness cannot do is kill the old process's threads: the
source's migration thread of the stopped service would go on and roll
back or finish the migration itself, which a dead nova-compute never
does. The tests therefore mark the attempts of a "killed" source as dead:
an ``abortJob`` no longer releases them (the new service's start-up abort
reaches a job nobody waits for), and they are only released once the
test has checked the outcome (:meth:`RestartTestBase._bury`), so that no
thread outlives the test.

The agents' RPC is the harness's in-process adapter to REAL
``AgentManager`` objects (``base.InProcessAgents``; no message bus, no
QEMU stream) in :class:`SourceRestartThroughAgentsTest`: it checks that
the restarted source makes every agent drop the migration.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from typing import Any

import fixtures
from nova.compute import rpcapi as compute_rpcapi
from nova import exception as nova_exception

from tests.functional.nova import base
from tests.functional.nova import test_redirect

WAIT_S = test_redirect.WAIT_S


class RestartTestBase(test_redirect.RedirectTestBase):
    """Redirect tests whose computes persist their runs in a temp dir."""

    def setUp(self) -> None:
        state_dir = tempfile.mkdtemp(prefix="dcmigrate-runs-")
        self.addCleanup(shutil.rmtree, state_dir, True)
        base.CONF.set_override("state_dir", state_dir,
                               group="dcmigrate_compute")
        self.state_dir = state_dir
        #: Attempts of a source that was "killed" (see the module doc).
        self.dead: list[test_redirect._Attempt] = []
        super().setUp()

    def _abort_job(self, domain: Any = None) -> None:
        with self.cond:
            self.abort_calls += 1
            for attempt in self.attempts:
                if attempt in self.dead:
                    continue
                if not attempt.release.is_set():
                    attempt.aborted = True
                    attempt.release.set()

    def _records(self) -> list[str]:
        return sorted(n for n in os.listdir(self.state_dir)
                      if not n.startswith("."))

    def _restart(self, host: str) -> Any:
        return self.restart_compute_service(host)

    def _kill_and_restart_source(self) -> Any:
        """Restart ``src`` as if its process had died; return the old
        driver (its threads are buried at the end of the test)."""
        old = self.computes["src"].driver
        with self.cond:
            self.dead.extend(a for a in self.attempts
                             if not a.release.is_set())
        self.addCleanup(self._bury, old)
        self._restart("src")
        return old

    def _bury(self, old_driver: Any) -> None:
        # Let the dead process's thread end (it finds the instance no
        # longer migrating) before the fixtures go away.
        with self.cond:
            for attempt in self.dead:
                attempt.failed = True
                attempt.release.set()
        deadline = time.monotonic() + WAIT_S
        while old_driver.dcmigrate_runs.get(self.server["id"]) is not None:
            if time.monotonic() > deadline:
                self.fail("the old source's migration thread never ended")
            time.sleep(0.1)

    def _assert_nothing_persisted(self) -> None:
        self.assertEqual([], self._records())


class RestartTest(RestartTestBase):

    def test_source_restarted_mid_redirect(self) -> None:
        # The source dies while the redirected attempt to dest2 runs
        # (dest1 already released). The restarted source rolls the
        # migration back: ACTIVE on the source, where its domain runs.
        self._boot()
        self._start_migration("dest1")
        self._redirect("dest2")
        self._wait_attempt(2)
        self._wait_state("running")
        self._assert_running_to("dest2", ("dest1", "dest3"))
        self.assertEqual([self.server["id"] + ".json"], self._records())

        self._kill_and_restart_source()

        self._assert_back_on_source(("dest1", "dest2", "dest3"),
                                    status="error")
        # The one domain runs where the server is.
        conn = self.computes["src"].driver._host.get_connection()
        self.assertTrue(conn.lookupByUUIDString(self.server["id"])
                        .isActive())
        self._assert_nothing_persisted()
        self.assertIn("was being redirected (to dest2) when nova-compute "
                      "stopped; rolling it back", self.stdlog.logger.output)

    def test_source_restarted_while_preparing(self) -> None:
        # The source dies while the new host is being prepared (its claim,
        # port binding and pre_live_migration done, the job to dest1 still
        # running): the restart undoes both destinations.
        self._boot()
        self._start_migration("dest1")
        gate = self._hold_pre_live_migration()
        self._redirect("dest2")
        self.assertTrue(gate["reached"].wait(WAIT_S))
        self._assert_allocations({"dest1", "dest2"}, {"src"})
        self.assertEqual({"src": "ACTIVE", "dest1": "INACTIVE",
                          "dest2": "INACTIVE"}, self._bindings())

        self._kill_and_restart_source()
        # Released only when the test ends (runs before _bury): the dead
        # process's prepare worker must not undo anything meanwhile.
        self.addCleanup(gate["release"].set)

        self._assert_back_on_source(("dest1", "dest2", "dest3"),
                                    status="error")
        self._assert_nothing_persisted()

    def _hold_pre_live_migration(self) -> dict[str, Any]:
        # Hold the redirect's pre_live_migration on dest2 after it ran, so
        # the source dies with everything set up on the new host.
        stock = compute_rpcapi.ComputeAPI.pre_live_migration
        gate = {"reached": threading.Event(), "release": threading.Event()}

        def pre(api: Any, ctxt: Any, instance: Any, block_migration: Any,
                disk: Any, host: str, migrate_data: Any) -> Any:
            md = stock(api, ctxt, instance, block_migration, disk, host,
                       migrate_data)
            if host == "dest2":
                gate["reached"].set()
                gate["release"].wait(WAIT_S)
                raise nova_exception.MigrationError(
                    reason="the source died (test)")
            return md

        self.useFixture(fixtures.MonkeyPatch(
            "nova.compute.rpcapi.ComputeAPI.pre_live_migration", pre))
        return gate

    def test_old_destination_restarted_mid_redirect(self) -> None:
        # The old destination is down while the redirect releases it
        # (placement refuses its step), and restarts while the attempt to
        # dest2 runs: the source's housekeeping finishes its clean-up and
        # drops the persisted record once nothing is pending.
        self._refuse_release("dest1", "dest1 down (test)")
        self.computes["src"].driver.dcmigrate_cleanups.interval = 0
        self._boot()
        self._start_migration("dest1")
        self._redirect("dest2")
        attempt = self._wait_attempt(2)
        self.assertEqual(1, len(self._wait_state("running")
                                ["cleanup_pending"]))
        self._restart("dest1")
        self.rp["dest1"] = self.compute_rp_uuids["dest1"]

        self._run_periodics()
        self.assertEqual([], self._status()["cleanup_pending"])
        self._assert_running_to("dest2", ("dest1", "dest3"))
        self._finish(attempt, "dest2")
        self._assert_finished_on("dest2", ("src", "dest1", "dest3"))
        self._assert_nothing_persisted()

    def test_new_destination_restarted_mid_redirect(self) -> None:
        # The new destination restarts while the redirected attempt runs:
        # the migration completes there as if nothing happened.
        self._boot()
        self._start_migration("dest1")
        self._redirect("dest2")
        attempt = self._wait_attempt(2)
        self._wait_state("running")
        self._restart("dest2")
        self.rp["dest2"] = self.compute_rp_uuids["dest2"]
        self._assert_running_to("dest2", ("dest1", "dest3"))

        self._finish(attempt, "dest2")
        self._assert_finished_on("dest2", ("src", "dest1", "dest3"))
        self._assert_nothing_persisted()

    def test_source_restarted_with_a_pending_cleanup(self) -> None:
        # The migration completed on dest2 with dest1's clean-up pending
        # (placement refused it); the source restarts before its retry:
        # the persisted record makes the new service finish it.
        placement_back = self._refuse_release(
            "dest1", "placement down (test)", times=None)
        self._boot(volume=False)
        self._start_migration("dest1")
        self._redirect("dest2")
        attempt = self._wait_attempt(2)
        self._wait_state("running")
        self._complete(attempt)
        self._wait_migration("completed")
        self._wait_server("ACTIVE")
        self._assert_allocations({"dest1", "dest2"}, set())
        self.assertEqual([self.server["id"] + ".json"], self._records())

        placement_back.set()
        self._restart("src")
        self._assert_finished_on("dest2", ("src", "dest1", "dest3"),
                                 volume=False)
        self._assert_nothing_persisted()


class SourceRestartThroughAgentsTest(RestartTestBase):
    """The source restart with the agent transport (in-process agents)."""

    DCMIGRATE_TRANSPORT = "agents"

    def test_source_restart_drops_the_agents_sessions(self) -> None:
        self._boot(volume=False)
        self._start_migration("dest1")
        self._redirect("dest2")
        self._wait_attempt(2)
        self._wait_state("running")
        mid = self.migration["uuid"]
        managers = self.agents.managers
        self.assertTrue(all(mid in managers[h].list_migrations({})
                            for h in ("src", "dest1", "dest2")))

        self._kill_and_restart_source()

        self._assert_back_on_source(("dest1", "dest2", "dest3"),
                                    status="error", volume=False)
        self.assertEqual({h: [] for h in managers},
                         {h: m.list_migrations({})
                          for h, m in managers.items()})
        cleaned = {host for host, method, _kw in self.agents.calls
                   if method == "cleanup"}
        self.assertEqual({"src", "dest1", "dest2"}, cleaned)
        self._assert_nothing_persisted()
