"""Redirecting a running live migration, on Nova's in-process harness.

Real nova-api, conductor, scheduler, placement (PlacementFixture), the
Neutron and Cinder fixtures, and four nova-compute services (``src``,
``dest1``, ``dest2``, ``dest3``) running DCMigrateLibvirtDriver on
fakelibvirt. Redirects are requested through the versioned
``dcmigrate_compute`` RPC client, over Nova's own (fake) message bus, to
the endpoint the driver registered in the source's nova-compute.

What fakelibvirt replaces: libvirt's migration job. ``migrateToURI3`` is
the stub below: each call is one attempt that blocks until the test lets
it complete (it then defines the domain on the destination and marks the
source job completed, as Nova's LibvirtMigrationMixin does) or until
``abortJob`` stops it (it then fails as libvirt does after an abort). No
memory moves and no agent runs; everything Nova-side is real and checked:
the server, the migration record, placement allocations of the instance
and migration consumers, Neutron port bindings, Cinder attachments and
BDMs, and the resource usage of every host.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import fixtures
from nova import availability_zones
from nova.compute import manager as nova_manager
from nova import context as nova_context
from nova import exception as nova_exception
from nova import objects
from nova.scheduler.client import report as report_client
from nova.tests.fixtures import libvirt as fakelibvirt
from nova.tests.functional import integrated_helpers
from nova.tests.functional.libvirt import base as libvirt_base
from nova.virt.libvirt import driver as libvirt_driver
import oslo_messaging as messaging
from oslo_utils import uuidutils

from nova_dcmigrate.compute import exception as redirect_exception
from nova_dcmigrate.compute import rpcapi
from tests.functional.nova import base

HOSTS = ("src", "dest1", "dest2", "dest3")
#: Seconds any wait in these tests may take before the test fails.
WAIT_S = 30.0


class _Attempt:
    """One migrateToURI3 call: a migration attempt to ``host``."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.release = threading.Event()
        self.aborted = False
        self.failed = False
        self.ended = threading.Event()


class RedirectTestBase(base.DCMigrateDriverMixin,
                       libvirt_base.ServersTestBase,
                       integrated_helpers.InstanceHelperMixin):
    """Four computes; migrations held until the test releases them."""

    ADMIN_API = True
    # 2.74 still reports hypervisor usage (os-hypervisors/detail).
    microversion = "2.74"

    def setUp(self) -> None:
        rpcapi.register_exception_modules()
        super().setUp()
        self.useFixture(fixtures.MonkeyPatch(
            "nova.tests.fixtures.libvirt.Domain.migrateToURI3",
            self._migrate_stub))
        self.useFixture(fixtures.MonkeyPatch(
            "nova.tests.fixtures.libvirt.Domain.abortJob",
            self._abort_job))
        self.attempts: list[_Attempt] = []
        self.cond = threading.Condition()
        self.abort_calls = 0
        for host in HOSTS:
            self.start_compute(host)
        self.ctxt = nova_context.get_admin_context()
        self.client = rpcapi.ComputeRedirectAPI()
        self.rp = {h: self.compute_rp_uuids[h] for h in HOSTS}
        # Release every held attempt at the end so no thread outlives the
        # test.
        self.addCleanup(self._release_all)

    # -- fakelibvirt migration job -------------------------------------------

    def _migrate_stub(self, domain: Any, destination: str,
                      params: dict[str, Any], flags: int) -> None:
        attempt = _Attempt(destination.split("//")[1].split("/")[0])
        with self.cond:
            self.attempts.append(attempt)
            self.cond.notify_all()
        try:
            if not attempt.release.wait(WAIT_S * 2):
                attempt.failed = True
                raise fakelibvirt.make_libvirtError(
                    fakelibvirt.libvirtError, "test never released the job",
                    error_code=fakelibvirt.VIR_ERR_INTERNAL_ERROR)
            if attempt.aborted:
                raise fakelibvirt.make_libvirtError(
                    fakelibvirt.libvirtError,
                    "operation aborted: migration out job: canceled by "
                    "client", error_code=fakelibvirt.VIR_ERR_OPERATION_FAILED)
            if attempt.failed:
                raise fakelibvirt.make_libvirtError(
                    fakelibvirt.libvirtError, "job failed",
                    error_code=fakelibvirt.VIR_ERR_INTERNAL_ERROR)
            dest = self.computes[attempt.host]
            dest.driver._host.get_connection().createXML(
                params["destination_xml"], "fake-createXML-flags")
            src = self.computes["src"].driver._host.get_connection()
            src.lookupByUUIDString(self.server["id"]).complete_job()
        finally:
            attempt.ended.set()

    def _abort_job(self, domain: Any = None) -> None:
        with self.cond:
            self.abort_calls += 1
            for attempt in self.attempts:
                if not attempt.release.is_set():
                    attempt.aborted = True
                    attempt.release.set()

    def _release_all(self) -> None:
        with self.cond:
            for attempt in self.attempts:
                attempt.failed = not attempt.release.is_set()
                attempt.release.set()

    def _wait_attempt(self, number: int) -> _Attempt:
        """Return the ``number``-th attempt (1-based) once it started."""
        deadline = time.monotonic() + WAIT_S
        with self.cond:
            while len(self.attempts) < number:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.fail("attempt %d never started (attempts: %s)"
                              % (number, [a.host for a in self.attempts]))
                self.cond.wait(left)
            return self.attempts[number - 1]

    def _complete(self, attempt: _Attempt) -> None:
        attempt.release.set()

    # -- driving --------------------------------------------------------------

    def _boot(self, volume: bool = True) -> dict[str, Any]:
        # Every host is alike: what one reports before anything runs on it
        # is what an idle host reports.
        self.idle_usage = self._hypervisor_usage("dest3")
        self.server = self._create_server(
            host="src", networks=[{"port": self.neutron.port_1["id"]}])
        if volume:
            self._attach_volume(self.server, self.cinder.ISCSI_BACKED_VOL)
        self.source_attachment = self._attachment_ids()
        return self.server

    def _start_migration(self, host: str = "dest1") -> dict[str, Any]:
        """Live-migrate to ``host``; return the running migration."""
        self.api.post_server_action(
            self.server["id"],
            {"os-migrateLive": {"host": host, "block_migration": "auto"}})
        attempt = self._wait_attempt(1)
        self.assertEqual(host, attempt.host)
        self.migration = self._wait_migration("running")
        return self.migration

    def _wait_migration(self, *statuses: str) -> dict[str, Any]:
        """Wait (up to WAIT_S) for the server's migration to reach one of
        ``statuses``; Nova's helper gives up after 5 s."""
        deadline = time.monotonic() + WAIT_S
        while True:
            for mig in self.admin_api.api_get(
                    "/os-migrations?instance_uuid=%s" % self.server["id"]
            ).body["migrations"]:
                if mig["status"] in statuses:
                    return dict(mig)
            if time.monotonic() > deadline:
                self.fail("migration never reached %s" % (statuses,))
            time.sleep(0.2)

    def _wait_server(self, status: str) -> dict[str, Any]:
        return dict(self._wait_for_state_change(
            self.server, status, max_retries=int(WAIT_S / 0.5)))

    def _objects(self) -> tuple[Any, Any]:
        return (objects.Instance.get_by_uuid(self.ctxt, self.server["id"]),
                objects.Migration.get_by_uuid(self.ctxt,
                                              self.migration["uuid"]))

    def _redirect(self, host: str | None = None) -> dict[str, Any]:
        instance, migration = self._objects()
        return self.client.redirect_live_migration(
            self.ctxt, instance, migration, host=host)

    def _status(self) -> dict[str, Any]:
        instance, migration = self._objects()
        return self.client.get_redirect_status(self.ctxt, instance,
                                               migration)

    def _wait_state(self, *states: str) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT_S
        while True:
            status = self._status()
            if status["state"] in states:
                return status
            if time.monotonic() > deadline:
                self.fail("redirect state %s, expected %s"
                          % (status, states))
            time.sleep(0.1)

    def _finish(self, attempt: _Attempt, host: str) -> dict[str, Any]:
        """Let ``attempt`` complete; return the server once ACTIVE."""
        self._complete(attempt)
        self._wait_migration("completed")
        server = self._wait_server("ACTIVE")
        self.assertEqual(host, server["OS-EXT-SRV-ATTR:host"])
        return server

    # -- state of the world ---------------------------------------------------

    def _migration_record(self) -> Any:
        return objects.Migration.get_by_uuid(self.ctxt,
                                             self.migration["uuid"])

    def _bindings(self) -> dict[str, str]:
        """``{host: status}`` of the port's bindings in the fixture."""
        port = self.neutron.port_1["id"]
        return {host: b["status"] for host, b in
                self.neutron._port_bindings.get(port, {}).items()}

    def _attachment_ids(self) -> set[str]:
        vol = self.cinder.ISCSI_BACKED_VOL
        return set(self.cinder.volume_to_attachment.get(vol, {}))

    def _bdm_attachment(self) -> str:
        bdm = objects.BlockDeviceMapping.get_by_volume_and_instance(
            self.ctxt, self.cinder.ISCSI_BACKED_VOL, self.server["id"])
        return str(bdm.attachment_id)

    def _hypervisor_usage(self, host: str) -> dict[str, Any]:
        hyp = self.admin_api.api_get(
            "/os-hypervisors/detail?hypervisor_hostname_pattern=%s" % host
        ).body["hypervisors"][0]
        return {k: hyp[k] for k in ("vcpus_used", "memory_mb_used",
                                    "local_gb_used", "running_vms")}

    def _assert_allocations(self, instance_hosts: set[str],
                            migration_hosts: set[str]) -> None:
        allocs = self._get_allocations_by_server_uuid(self.server["id"])
        self.assertEqual({self.rp[h] for h in instance_hosts}, set(allocs))
        migration_allocs = self._get_allocations_by_server_uuid(
            self.migration["uuid"])
        self.assertEqual({self.rp[h] for h in migration_hosts},
                         set(migration_allocs))

    def _assert_idle(self, *hosts: str) -> None:
        """Nothing of the server is left on ``hosts``."""
        self._run_periodics()
        for host in hosts:
            usages = self._get_provider_usages(self.rp[host])
            self.assertEqual({0}, set(usages.values()), host)
            self.assertEqual(self.idle_usage, self._hypervisor_usage(host),
                             host)
            domains = self.computes[host].driver._host.get_connection()
            self.assertEqual([], domains.listAllDomains(0), host)

    def _assert_running_to(self, dest: str, idle: tuple[str, ...],
                           redirected: bool = True,
                           volume: bool = True) -> None:
        """Mid-migration state while the attempt to ``dest`` runs."""
        mig = self._migration_record()
        self.assertEqual(("running", "src", dest),
                         (mig.status, mig.source_compute, mig.dest_compute))
        self.assertEqual(dest, mig.dest_node)
        if redirected:
            # Nova's conductor leaves dest_compute_id and dest_host unset
            # (only a NUMA claim sets them); a redirect sets all four.
            cn = objects.ComputeNode.get_by_host_and_nodename(
                self.ctxt, dest, mig.dest_node)
            self.assertEqual((cn.id, str(cn.host_ip)),
                             (mig.dest_compute_id, mig.dest_host))
        server = self.api.get_server(self.server["id"])
        self.assertEqual(("MIGRATING", "src"),
                         (server["status"], server["OS-EXT-SRV-ATTR:host"]))
        self._assert_allocations({dest}, {"src"})
        self.assertEqual({"src": "ACTIVE", dest: "INACTIVE"},
                         self._bindings())
        if volume:
            attachments = self._attachment_ids()
            self.assertEqual(2, len(attachments))
            self.assertLessEqual(self.source_attachment, attachments)
            self.assertIn(self._bdm_attachment(), attachments)
            self.assertNotIn(self._bdm_attachment(), self.source_attachment)
        self._assert_idle(*idle)

    def _assert_finished_on(self, dest: str, others: tuple[str, ...],
                            volume: bool = True) -> None:
        mig = self._migration_record()
        self.assertEqual(("completed", "src", dest, dest),
                         (mig.status, mig.source_compute, mig.dest_compute,
                          mig.dest_node))
        server = self.api.get_server(self.server["id"])
        self.assertEqual(("ACTIVE", dest, None),
                         (server["status"], server["OS-EXT-SRV-ATTR:host"],
                          server["OS-EXT-STS:task_state"]))
        self._assert_allocations({dest}, set())
        self.assertEqual({dest: "ACTIVE"}, self._bindings())
        if volume:
            attachments = self._attachment_ids()
            self.assertEqual({self._bdm_attachment()}, attachments)
            self.assertFalse(attachments & self.source_attachment)
            bdm = objects.BlockDeviceMapping.get_by_volume_and_instance(
                self.ctxt, self.cinder.ISCSI_BACKED_VOL, self.server["id"])
            self.assertIn("device_path",
                          json.loads(bdm.connection_info)["data"])
        self._assert_idle(*others)

    def _assert_back_on_source(self, dest_hosts: tuple[str, ...],
                               status: str = "failed",
                               volume: bool = True) -> None:
        mig = self._migration_record()
        self.assertEqual(status, mig.status)
        server = self._wait_server("ACTIVE")
        self.assertEqual(("src", None),
                         (server["OS-EXT-SRV-ATTR:host"],
                          server["OS-EXT-STS:task_state"]))
        self._assert_allocations({"src"}, set())
        self.assertEqual({"src": "ACTIVE"}, self._bindings())
        if volume:
            self.assertEqual(self.source_attachment, self._attachment_ids())
            self.assertEqual(self.source_attachment,
                             {self._bdm_attachment()})
        self._assert_idle(*dest_hosts)

    def _refuse_release(self, host: str, error: str,
                        times: int | None = 1) -> threading.Event:
        """Placement refuses to release ``host``'s share of the instance's
        allocation (as when it is down): ``times`` times, or with None
        until the returned event is set (placement is back)."""
        stock = (report_client.SchedulerReportClient.
                 remove_provider_tree_from_instance_allocation)
        back = threading.Event()
        refused: list[str] = []
        test = self

        def remove(client: Any, context: Any, consumer: str,
                   root_rp: str) -> Any:
            if (root_rp == test.rp[host] and not back.is_set()
                    and (times is None or len(refused) < times)):
                refused.append(root_rp)
                raise nova_exception.AllocationUpdateFailed(
                    consumer_uuid=consumer, error=error)
            return stock(client, context, consumer, root_rp)

        self.useFixture(fixtures.MonkeyPatch(
            "nova.scheduler.client.report.SchedulerReportClient."
            "remove_provider_tree_from_instance_allocation", remove))
        return back


class RedirectTest(RedirectTestBase):

    def test_abort_without_a_redirect(self) -> None:
        # Nova's abort API with no redirect under way: libvirt ends the
        # job with "operation aborted" and Nova's monitor rolls back to
        # the source. Nova 34 then collects the migration thread's error
        # (future.result()) and would put the instance in ERROR: the
        # error of a job the user aborted is its expected end.
        self._boot()
        self._start_migration("dest1")
        self.api.api_delete("/servers/%s/migrations/%s" % (
            self.server["id"], self.migration["id"]))
        mig = self._wait_migration("cancelled", "failed", "error")
        self.assertTrue(self.attempts[0].aborted)
        self.assertEqual(1, len(self.attempts))
        self.assertNotEqual("error", mig["status"], mig)
        self._assert_back_on_source(("dest1",), status=mig["status"])

    def test_redirect_to_named_host(self) -> None:
        self._boot()
        self._start_migration("dest1")
        self._assert_running_to("dest1", ("dest2", "dest3"), redirected=False)

        status = self._redirect("dest2")
        self.assertEqual(("redirect-requested", "dest2", "dest1"),
                         (status["state"], status["target"],
                          status["destination"]))

        attempt = self._wait_attempt(2)
        self.assertEqual("dest2", attempt.host)
        self.assertTrue(self.attempts[0].aborted)
        status = self._wait_state("running")
        self.assertEqual((["dest1", "dest2"], 1, None),
                         (status["destinations"], status["redirects"],
                          status["last_error"]))
        self._assert_running_to("dest2", ("dest1",))
        server = self.api.get_server(self.server["id"])
        self.assertEqual("nova", server["OS-EXT-AZ:availability_zone"])

        self._finish(attempt, "dest2")
        self._assert_finished_on("dest2", ("src", "dest1"))
        self.assertEqual("completed", self._status()["state"])
        self.assertEqual(2, len(self.attempts))
        # Quiet when nothing is wrong: Nova's "Live Migration failure" line
        # of the job stopped for the redirect is logged at INFO, and no
        # ERROR at all is logged for the redirect.
        log = self.stdlog.logger.output
        self.assertIn("INFO [nova.virt.libvirt.driver] Live Migration "
                      "failure", log)
        # stevedore's line about a dogpile.cache plugin whose optional
        # library is not installed (oslo_cache.memcache_pool needs
        # python-memcached) comes from whichever test of the worker sets
        # up Nova's cache first, not from the redirect.
        self.assertEqual([], [line for line in log.splitlines()
                              if " ERROR " in line and
                              "[stevedore.extension]" not in line])

    def test_redirect_with_repick(self) -> None:
        self._boot()
        self._start_migration("dest1")

        status = self._redirect()
        self.assertEqual((None, "redirect-requested"),
                         (status["target"], status["state"]))
        attempt = self._wait_attempt(2)
        new = attempt.host
        # The scheduler never picks the source or the current destination.
        self.assertIn(new, ("dest2", "dest3"))
        status = self._wait_state("running")
        self.assertEqual(["dest1", new], status["destinations"])
        self._assert_running_to(new, ("dest1",))

        self._finish(attempt, new)
        other = ({"dest2", "dest3"} - {new}).pop()
        self._assert_finished_on(new, ("src", "dest1", other))

    def test_no_valid_host_continues_to_old_destination(self) -> None:
        self._boot()
        self._start_migration("dest1")
        for host in ("dest2", "dest3"):
            service = self.admin_api.get_services(
                binary="nova-compute", host=host)[0]
            self.admin_api.put_service(service["id"],
                                       {"status": "disabled"})

        self._redirect()
        status = self._wait_state("running")
        error = status["last_error"]
        self.assertEqual("NoValidRedirectTarget", error["type"])
        # transport = direct: no agent is needed on the new host, so the
        # re-pick does not require the trait (test_agent_transport.py
        # checks the re-pick with it).
        self.assertEqual("none", error["data"]["trait"])
        self.assertEqual(["dest1", "src"],
                         error["data"]["ignored_hosts"].split(", "))
        self.assertEqual((["dest1"], 0), (status["destinations"],
                                          status["redirects"]))
        self.assertEqual(1, len(self.attempts))
        self.assertFalse(self.attempts[0].aborted)
        self._assert_running_to("dest1", ("dest2", "dest3"),
                                redirected=False)

        self._finish(self.attempts[0], "dest1")
        self._assert_finished_on("dest1", ("src", "dest2", "dest3"))

    def test_two_redirects(self) -> None:
        self._boot()
        self._start_migration("dest1")
        self._redirect("dest2")
        self._wait_attempt(2)
        self._wait_state("running")
        self._redirect("dest3")
        attempt = self._wait_attempt(3)
        self.assertEqual(("dest3", True, True),
                         (attempt.host, self.attempts[0].aborted,
                          self.attempts[1].aborted))
        status = self._wait_state("running")
        self.assertEqual((["dest1", "dest2", "dest3"], 2),
                         (status["destinations"], status["redirects"]))
        self._assert_running_to("dest3", ("dest1", "dest2"))

        self._finish(attempt, "dest3")
        self._assert_finished_on("dest3", ("src", "dest1", "dest2"))

    def test_redirect_back_to_an_earlier_destination(self) -> None:
        self._boot()
        self._start_migration("dest1")
        self._redirect("dest2")
        self._wait_attempt(2)
        self._wait_state("running")
        self._redirect("dest1")
        attempt = self._wait_attempt(3)
        self.assertEqual("dest1", attempt.host)
        status = self._wait_state("running")
        self.assertEqual(["dest1", "dest2", "dest1"], status["destinations"])
        self._assert_running_to("dest1", ("dest2",))

        self._finish(attempt, "dest1")
        self._assert_finished_on("dest1", ("src", "dest2", "dest3"))

    def test_new_host_failing_its_prechecks(self) -> None:
        refusing = self.computes["dest2"].driver
        stock = libvirt_driver.LibvirtDriver.\
            check_can_live_migrate_destination

        def check(drv: Any, *args: Any, **kwargs: Any) -> Any:
            if drv is refusing:
                raise nova_exception.MigrationPreCheckError(
                    reason="dest2 refuses (test)")
            return stock(drv, *args, **kwargs)

        self.useFixture(fixtures.MonkeyPatch(
            "nova.virt.libvirt.driver.LibvirtDriver."
            "check_can_live_migrate_destination", check))
        self._boot()
        self._start_migration("dest1")

        self._redirect("dest2")
        status = self._wait_state("running")
        error = status["last_error"]
        self.assertEqual("RedirectPreparationFailed", error["type"])
        self.assertEqual(
            ("dest2", "running the live-migration checks on dest2", "dest1"),
            (error["data"]["host"], error["data"]["step"],
             error["data"]["destination"]))
        self.assertIn("dest2 refuses (test)", error["data"]["reason"])
        self.assertEqual(1, len(self.attempts))
        # The claim on dest2 was released; nothing else was made there.
        self._assert_running_to("dest1", ("dest2",), redirected=False)

        # The migration can still be redirected elsewhere.
        self._redirect("dest3")
        attempt = self._wait_attempt(2)
        self._wait_state("running")
        self._assert_running_to("dest3", ("dest1", "dest2"))
        self._finish(attempt, "dest3")
        self._assert_finished_on("dest3", ("src", "dest1", "dest2"))

    def test_failed_cleanup_is_reported_and_finished_later(self) -> None:
        # Placement refuses to release the old destination once: the
        # redirect goes on, the step is reported in the status (and at
        # ERROR), and the periodic housekeeping finishes it.
        self._refuse_release("dest1", "placement down (test)")
        # Retry at the next housekeeping round instead of in 60 s.
        self.computes["src"].driver.dcmigrate_cleanups.interval = 0
        self._boot(volume=False)
        self._start_migration("dest1")
        self._redirect("dest2")
        attempt = self._wait_attempt(2)
        status = self._wait_state("running")
        [pending] = status["cleanup_pending"]
        self.assertEqual(
            ("dest1", "releasing the placement allocation on dest1", 1,
             "pending"),
            (pending["host"], pending["step"], pending["tries"],
             pending["state"]))
        self.assertIn("AllocationUpdateFailed", pending["error"])
        self._assert_allocations({"dest1", "dest2"}, {"src"})
        self.assertIn("releasing the placement allocation on dest1 failed",
                      self.stdlog.logger.output)

        self._run_periodics()
        self.assertEqual([], self._status()["cleanup_pending"])
        self._assert_running_to("dest2", ("dest1",), volume=False)
        self._finish(attempt, "dest2")
        self._assert_finished_on("dest2", ("src", "dest1"), volume=False)

    def test_numa_instance_refused(self) -> None:
        # A redirect does not rewrite the migration context: an instance
        # with a NUMA topology is refused at the request, nothing changes.
        flavor = self._create_flavor(extra_spec={"hw:numa_nodes": "1"})
        self.idle_usage = self._hypervisor_usage("dest3")
        self.server = self._create_server(host="src", flavor_id=flavor,
                                          networks="none")
        self._start_migration("dest1")
        err = self.assertRaises(redirect_exception.UnsupportedInstance,
                                self._redirect, "dest2")
        self.assertEqual((self.migration["uuid"], self.server["id"]),
                         (err.kwargs["migration"], err.kwargs["instance"]))
        self.assertIn("NUMA topology", err.kwargs["reason"])
        self.assertEqual(("running", 0, None), (
            self._status()["state"], self._status()["redirects"],
            self._status()["last_error"]))
        self.assertEqual(1, len(self.attempts))
        self._finish(self.attempts[0], "dest1")

    def test_failure_after_stopping_the_old_job_rolls_back(self) -> None:
        # The old destination cannot take the guest any more once its job
        # was stopped: a redirect failing then must roll back to the source,
        # with the instance usable (not ERROR) and nothing left anywhere.
        stock = availability_zones.get_host_availability_zone

        def get_host_availability_zone(context: Any, host: str) -> Any:
            if host == "dest2":
                raise nova_exception.NovaException("AZ lookup failed (test)")
            return stock(context, host)

        self.useFixture(fixtures.MonkeyPatch(
            "nova.availability_zones.get_host_availability_zone",
            get_host_availability_zone))
        self._boot()
        self._start_migration("dest1")

        self._redirect("dest2")
        self._wait_migration("failed")
        self._assert_back_on_source(("dest1", "dest2", "dest3"))
        self.assertEqual(1, len(self.attempts))
        self.assertTrue(self.attempts[0].aborted)
        status = self._status()
        self.assertEqual(("rolled-back", ["dest1"], "NovaException"),
                         (status["state"], status["destinations"],
                          status["last_error"]["type"]))
        # The migration record names the old destination again.
        mig = self._migration_record()
        self.assertEqual(("dest1", None),
                         (mig.dest_compute, mig.dest_compute_id))


class RedirectHeldTest(RedirectTestBase):
    """Redirects held in ``pre_live_migration`` on the new host."""

    def setUp(self) -> None:
        super().setUp()
        self.entered = threading.Event()
        self.proceed = threading.Event()
        self.addCleanup(self.proceed.set)
        stock = nova_manager.ComputeManager.pre_live_migration
        test = self

        def pre_live_migration(mgr: Any, *args: Any, **kwargs: Any) -> Any:
            if mgr.host == "dest2":
                test.entered.set()
                test.proceed.wait(WAIT_S)
            return stock(mgr, *args, **kwargs)

        self.useFixture(fixtures.MonkeyPatch(
            "nova.compute.manager.ComputeManager.pre_live_migration",
            pre_live_migration))

    def _hold_redirect(self) -> None:
        self._boot()
        self._start_migration("dest1")
        self._redirect("dest2")
        self.assertTrue(self.entered.wait(WAIT_S))
        self.assertEqual("preparing", self._status()["state"])

    def test_abort_during_a_redirect(self) -> None:
        self._hold_redirect()
        # Nova's abort API: the source defers it until the redirect step
        # ends, then rolls the migration back to the source.
        self.api.api_delete("/servers/%s/migrations/%s" % (
            self.server["id"], self.migration["id"]))
        self.assertEqual("preparing", self._status()["state"])
        self.proceed.set()

        self._wait_migration("cancelled")
        self._assert_back_on_source(("dest1", "dest2"), status="cancelled")
        self.assertEqual(1, len(self.attempts))
        self.assertTrue(self.attempts[0].aborted)
        status = self._status()
        self.assertEqual(("rolled-back", ["dest1"]),
                         (status["state"], status["destinations"]))
        # The abort cancelled the preparation at its next step.
        self.assertEqual("RedirectCancelled", status["last_error"]["type"])

    def test_monitor_polls_while_the_new_host_is_prepared(self) -> None:
        # The preparation runs in the run's worker: Nova's monitor keeps
        # polling the job (downtime steps, completion timeout, stats)
        # while pre_live_migration on the new host is held.
        polls: list[float] = []
        stock = fakelibvirt.Domain.jobStats

        def job_stats(domain: Any, flags: int = 0) -> Any:
            polls.append(time.monotonic())
            return stock(domain, flags)

        self.useFixture(fixtures.MonkeyPatch(
            "nova.tests.fixtures.libvirt.Domain.jobStats", job_stats))
        self._hold_redirect()
        before = len(polls)
        time.sleep(2.5)
        # Nova's monitor polls every 0.5 s.
        self.assertGreaterEqual(len(polls) - before, 3)
        self.assertEqual("preparing", self._status()["state"])
        self.proceed.set()

        attempt = self._wait_attempt(2)
        self.assertEqual("dest2", attempt.host)
        self._wait_state("running")
        self._finish(attempt, "dest2")
        self._assert_finished_on("dest2", ("src", "dest1"))

    def test_old_job_completing_during_the_prepare(self) -> None:
        # The guest reaches the old destination while the new host is
        # being prepared: the preparation is cancelled at its next step
        # and undone before Nova's post-migration reads the BDMs; the
        # migration completes on the old destination with nothing left on
        # the new one.
        self._hold_redirect()
        self._complete(self.attempts[0])
        self.assertEqual("completing", self._wait_state("completing")["state"])
        self.proceed.set()

        self._wait_migration("completed")
        self._wait_server("ACTIVE")
        self._assert_finished_on("dest1", ("src", "dest2", "dest3"))
        status = self._status()
        self.assertEqual(("completed", ["dest1"], 0),
                         (status["state"], status["destinations"],
                          status["redirects"]))
        self.assertEqual("RedirectCancelled", status["last_error"]["type"])
        self.assertEqual(1, len(self.attempts))
        self.assertFalse(self.attempts[0].aborted)

    def test_refused_requests(self) -> None:
        self._hold_redirect()
        instance, migration = self._objects()
        err = self.assertRaises(
            redirect_exception.RedirectInProgress,
            self.client.redirect_live_migration, self.ctxt, instance,
            migration, "dest3")
        self.assertEqual(("dest2", "preparing"),
                         (err.kwargs["target"], err.kwargs["state"]))
        self.proceed.set()
        self._wait_state("running")
        self.assertEqual("dest2", self._status()["destination"])

        cases = [
            ("src", redirect_exception.InvalidRedirectTarget,
             "it is the source of the migration"),
            ("dest2", redirect_exception.InvalidRedirectTarget,
             "it is the current destination"),
            ("nowhere", redirect_exception.InvalidRedirectTarget,
             "no nova-compute service on that host"),
        ]
        for host, exc, reason in cases:
            err = self.assertRaises(exc, self._redirect, host)
            self.assertEqual((host, reason, migration.uuid),
                             (err.kwargs["host"], err.kwargs["reason"],
                              err.kwargs["migration"]))

        record = self._migration_record()
        for status, exc in (
                ("running (post-copy)", redirect_exception.PostCopyMigration),
                ("post-migrating", redirect_exception.SwitchingOver),
                ("preparing", redirect_exception.MigrationNotRunning)):
            record.status = status
            record.save()
            self.assertRaises(exc, self._redirect, "dest3")
        record.status = "running"
        record.migration_type = "migration"
        record.save()
        self.assertRaises(redirect_exception.NotLiveMigration,
                          self._redirect, "dest3")
        record.migration_type = "live-migration"
        record.save()

        other = objects.Migration(
            uuid=uuidutils.generate_uuid(), source_compute="src",
            migration_type="live-migration", status="running")
        self.assertRaises(redirect_exception.UnknownMigration,
                          self.client.redirect_live_migration, self.ctxt,
                          instance, other, "dest3")
        bystander = self._create_server(host="src", networks="none")
        err = self.assertRaises(
            redirect_exception.UnknownLiveMigration,
            self.client.redirect_live_migration, self.ctxt,
            objects.Instance.get_by_uuid(self.ctxt, bystander["id"]),
            migration, "dest3")
        self.assertEqual("src", err.kwargs["host"])

        # None of the refusals changed anything.
        self.assertEqual(2, len(self.attempts))
        self._assert_running_to("dest2", ("dest1", "dest3"))
        self._finish(self.attempts[1], "dest2")
        self.assertEqual("completed", self._status()["state"])
        self.assertRaises(redirect_exception.UnknownLiveMigration,
                          self._redirect, "dest3")

    def test_version_cap(self) -> None:
        self.flags(rpc_version_cap="0.9", group="dcmigrate_compute")
        self.server = self._create_server(host="src", networks="none")
        instance = objects.Instance.get_by_uuid(self.ctxt, self.server["id"])
        migration = objects.Migration(source_compute="src")
        self.assertRaises(messaging.RPCVersionCapError,
                          rpcapi.ComputeRedirectAPI().get_redirect_status,
                          self.ctxt, instance, migration)
