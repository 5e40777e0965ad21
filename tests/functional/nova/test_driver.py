"""DCMigrateLibvirtDriver inside a whole in-process Nova deployment.

Real nova-api, conductor, scheduler and placement (fixture); three
nova-compute services on fakelibvirt running our driver. Live migrations
complete through Nova's LibvirtMigrationMixin stub of ``migrateToURI3``.
"""

from __future__ import annotations

from typing import Any

from nova import context as nova_context
from nova.tests.functional import integrated_helpers
from nova.tests.functional.libvirt import base as libvirt_base

from nova_dcmigrate.virt.libvirt import driver as dcm_driver
from tests.functional.nova import base

TRAIT = dcm_driver.AGENT_TRAIT


class _DriverTestBase(base.DCMigrateDriverMixin,
                      libvirt_base.LibvirtMigrationMixin,
                      libvirt_base.ServersTestBase,
                      integrated_helpers.InstanceHelperMixin):

    ADMIN_API = True
    microversion = "2.74"

    def setUp(self) -> None:
        super().setUp()
        self.migrate_calls: list[dict[str, Any]] = []
        for host in ("src", "dest", "other"):
            self.start_compute(host)
        self.src = self.computes["src"]

    def _migrate_stub(self, domain: Any, destination: str,
                      params: dict[str, Any], flags: int) -> None:
        # Record what the driver hands to libvirt, then complete the job
        # on whichever host the scheduler picked.
        self.migrate_calls.append(
            {"destination": destination, "params": params, "flags": flags})
        host = destination.split("//")[1].split("/")[0]
        self.dest = self.computes[host]
        super()._migrate_stub(domain, destination, params, flags)

    def _traits(self, host: str) -> set[str]:
        return set(self._get_provider_traits(self.compute_rp_uuids[host]))


class DCMigrateDriverTest(_DriverTestBase):
    """Boot and live-migrate with our driver (transport = direct)."""

    def test_no_trait_with_the_direct_transport(self) -> None:
        # No agent carries the stream: the trait is not reported, before
        # and after the periodic updates, and no agent is ever pinged.
        for host in ("src", "dest", "other"):
            self.assertNotIn(TRAIT, self._traits(host))
            self.assertFalse(
                self.computes[host].driver.dcmigrate_traits()[TRAIT])
        self._run_periodics()
        for host in ("src", "dest", "other"):
            self.assertNotIn(TRAIT, self._traits(host))
        self.assertEqual([], self.agents.calls)

    def test_boot_and_live_migrate(self) -> None:
        self.server = self._create_server(host="src", networks="none")
        self.assertEqual("src", self.server["OS-EXT-SRV-ATTR:host"])

        # No host: the scheduler picks among the other computes.
        self._live_migrate(self.server, migration_expected_state="completed")

        server = self._wait_for_state_change(self.server, "ACTIVE")
        new_host = server["OS-EXT-SRV-ATTR:host"]
        self.assertIn(new_host, ("dest", "other"))
        self.assertEqual(1, len(self.migrate_calls))
        call = self.migrate_calls[0]
        # Without a redirect the libvirt call is the stock one.
        self.assertEqual("qemu+tcp://%s/system" % new_host,
                         call["destination"])
        self.assertNotIn("migrate_uri", call["params"])
        self.assertIn("destination_xml", call["params"])
        # The instance consumer holds resources on the new host only; the
        # migration consumer's source allocation is gone.
        allocations = self._get_allocations_by_server_uuid(server["id"])
        self.assertEqual({self.compute_rp_uuids[new_host]},
                         set(allocations))
        migrations = self.api.api_get(
            "/os-migrations?instance_uuid=%s" % server["id"]
        ).body["migrations"]
        self.assertEqual(["completed"], [m["status"] for m in migrations])
        self.assertEqual(
            {}, self._get_allocations_by_server_uuid(
                migrations[0]["uuid"]))


class AgentTraitTest(_DriverTestBase):
    """The trait with the agent transport: reported while the host's
    (in-process, real) dcmigrate agent answers its ping."""

    DCMIGRATE_TRANSPORT = "agents"

    def test_trait_on_every_compute_node_provider(self) -> None:
        for host in ("src", "dest", "other"):
            traits = self._traits(host)
            self.assertIn(TRAIT, traits)
            self.assertIn("COMPUTE_NODE", traits)
            self.assertIn("COMPUTE_NET_VIF_MODEL_VIRTIO", traits)

    def test_provider_tree_update_never_pings(self) -> None:
        # update_provider_tree runs under Nova's COMPUTE_RESOURCE_SEMAPHORE
        # (it blocks claims): only the cached answer is used there, even
        # when it is due; the housekeeping pings.
        self.flags(agent_check_interval=0, group="dcmigrate_compute")
        manager = self.computes["dest"].manager
        pings = len(self.agents.methods("ping"))
        for _ in range(3):
            manager.update_available_resource(
                nova_context.get_admin_context())
        self.assertEqual(pings, len(self.agents.methods("ping")))
        self.assertIn(TRAIT, self._traits("dest"))
        manager.driver.dcmigrate_housekeeping()
        self.assertEqual(pings + 1, len(self.agents.methods("ping")))

    def test_only_difference_to_stock_driver_is_the_trait(self) -> None:
        with self.stock_driver():
            self.start_compute("stock")
        stock_rp = self.compute_rp_uuids["stock"]
        ours_rp = self.compute_rp_uuids["src"]

        self.assertNotIn(TRAIT, self._traits("stock"))
        self.assertEqual(self._traits("stock") | {TRAIT},
                         self._traits("src"))
        self.assertEqual(self._get_provider_inventory(stock_rp),
                         self._get_provider_inventory(ours_rp))
        # Periodic resource updates keep the trait.
        self._run_periodics()
        self.assertIn(TRAIT, self._traits("src"))

    def test_scheduler_can_require_the_trait(self) -> None:
        with self.stock_driver():
            self.start_compute("stock")
        flavor = self._create_flavor(
            extra_spec={"trait:%s" % TRAIT: "required"})
        self.server = self._create_server(
            host="src", flavor_id=flavor, networks="none")

        # The stock-driver host lacks the trait: no valid host. Under
        # Nova's CastAsCallFixture the NoValidHost reaches the API as a 500
        # (as in Nova's NUMALiveMigrationNegativeTests).
        self.api.api_post(
            "/servers/%s/action" % self.server["id"],
            {"os-migrateLive": {"host": "stock", "block_migration": "auto"}},
            check_response_status=[500])
        self._wait_for_migration_status(self.server, ["error"])
        server = self._wait_for_state_change(self.server, "ACTIVE")
        self.assertEqual("src", server["OS-EXT-SRV-ATTR:host"])
        self.assertEqual([], self.migrate_calls)

        self._live_migrate(self.server, migration_expected_state="completed",
                           host="dest")
        server = self._wait_for_state_change(self.server, "ACTIVE")
        self.assertEqual("dest", server["OS-EXT-SRV-ATTR:host"])

        # Control: without the trait requirement the stock-driver host is a
        # valid destination, so the refusal above came from the trait (and
        # our driver live-migrates to a stock-driver host -- through the
        # agents, so it needs one there; the stock driver still does not
        # report the trait).
        self.start_agent("stock")
        self._run_periodics()
        self.assertNotIn(TRAIT, self._traits("stock"))
        plain = self._create_flavor()
        self.server = self._create_server(
            host="src", flavor_id=plain, networks="none")
        server = self._live_migrate(self.server, host="stock")
        self.assertEqual("stock", server["OS-EXT-SRV-ATTR:host"])

    def test_trait_removed_while_the_agent_does_not_answer(self) -> None:
        drv = self.computes["dest"].driver
        self.assertIn(TRAIT, self._traits("dest"))
        self.stop_agent("dest")
        # The last answer is trusted for agent_check_interval (60 s).
        self._run_periodics()
        self.assertIn(TRAIT, self._traits("dest"))

        self.flags(agent_check_interval=0, group="dcmigrate_compute")
        self._run_periodics()
        self._run_periodics()
        self.assertNotIn(TRAIT, self._traits("dest"))
        self.assertFalse(drv.dcmigrate_traits()[TRAIT])
        for host in ("src", "other"):
            self.assertIn(TRAIT, self._traits(host))
        # One WARNING however often it is found silent.
        log = self.stdlog.logger.output
        self.assertEqual(1, log.count(
            "The dcmigrate agent of host dest does not answer"), log)
        self.assertIn("no agent on host dest", log)

        # Back: reported again at the next update.
        self.start_agent("dest")
        self._run_periodics()
        self.assertIn(TRAIT, self._traits("dest"))
        self.assertIn("The dcmigrate agent of host dest answers again",
                      self.stdlog.logger.output)
