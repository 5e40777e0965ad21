"""Re-pick and DCMigrateWeigher in a whole in-process Nova deployment.

Real nova-api, conductor, scheduler (with DCMigrateWeigher in
``[filter_scheduler] weight_classes``) and placement; four computes on
fakelibvirt running DCMigrateLibvirtDriver with the agent transport and
an in-process dcmigrate agent each, and one with the stock driver, which
therefore lacks the CUSTOM_DCMIGRATE_AGENT trait. A live migration
src -> dest1 is held running while the test, standing in for the redirect
orchestration, asks :mod:`nova_dcmigrate.scheduler.repick` for a new
destination; afterwards the migration is let go and must complete to dest1
as if nothing had happened.
"""

from __future__ import annotations

import threading
from typing import Any

from lxml import etree
from nova import context as nova_context
from nova import objects
from nova.tests.functional import integrated_helpers
from nova.tests.functional.libvirt import base as libvirt_base

from nova_dcmigrate.scheduler import constants
from nova_dcmigrate.scheduler import exception
from nova_dcmigrate.scheduler import repick
from nova_dcmigrate.scheduler import weights
from tests.functional.nova import base

WEIGHT_CLASSES = ["nova.scheduler.weights.all_weighers",
                  "nova_dcmigrate.scheduler.weights.DCMigrateWeigher"]


class RepickTest(base.DCMigrateDriverMixin,
                 libvirt_base.LibvirtMigrationMixin,
                 libvirt_base.ServersTestBase,
                 integrated_helpers.InstanceHelperMixin):

    ADMIN_API = True
    microversion = "2.74"
    # Our computes report the trait only with the agent transport and an
    # answering agent: each gets a real in-process one (base.py).
    DCMIGRATE_TRANSPORT = "agents"

    def _setup_scheduler_service(self) -> Any:
        # Before the scheduler starts: HostManager loads weighers once.
        self.flags(weight_classes=WEIGHT_CLASSES, group="filter_scheduler")
        return super()._setup_scheduler_service()

    def setUp(self) -> None:
        super().setUp()
        for host in ("src", "dest1", "hosta", "hostb"):
            self.start_compute(host)
        with self.stock_driver():
            self.start_compute("stock")
        self.src = self.computes["src"]
        self.dest = self.computes["dest1"]
        self.ctxt = nova_context.get_admin_context()
        # Held while the test inspects the running migration.
        self.gate = threading.Event()
        self.addCleanup(self.gate.set)

        self.server = self._create_server(host="src", networks="none")
        self._live_migrate(self.server, migration_expected_state="running",
                           server_expected_state="MIGRATING", host="dest1")
        self.instance = objects.Instance.get_by_uuid(
            self.ctxt, self.server["id"])
        self.request_spec = objects.RequestSpec.get_by_instance_uuid(
            self.ctxt, self.server["id"])
        self.migration = objects.Migration.get_by_instance_and_status(
            self.ctxt, self.server["id"], "running")

    def _migrate_stub(self, domain: Any, destination: str,
                      params: dict[str, Any], flags: int) -> None:
        self.gate.wait(120)
        self.dest.driver._host.get_connection().createXML(
            params["destination_xml"],
            "fake-createXML-doesnt-care-about-flags")
        uuid = etree.fromstring(params["destination_xml"]).find("./uuid").text
        self.src.driver._host.get_connection().lookupByUUIDString(
            uuid).complete_job()

    def _placement(self) -> dict[str, dict[str, Any]]:
        """Resources held by the instance and by the migration consumer.

        Provider generations are left out: a claim and its release bump
        them.
        """
        return {
            consumer: {
                rp: alloc["resources"]
                for rp, alloc in self._get_allocations_by_server_uuid(
                    uuid).items()}
            for consumer, uuid in (("instance", self.server["id"]),
                                   ("migration", self.migration.uuid))}

    def _rp(self, host: str) -> str:
        return self.compute_rp_uuids[host]

    def _repick(self, exclude: set[str], **kwargs: Any) -> tuple[str, str]:
        return repick.select_new_destination(
            self.ctxt, self.instance, self.request_spec, self.migration,
            exclude, **kwargs)

    def _finish_migration(self) -> None:
        """Let the held migration go; it must complete to dest1."""
        self.gate.set()
        self._wait_for_migration_status(self.server, ["completed"])
        server = self._wait_for_state_change(self.server, "ACTIVE")
        self.assertEqual("dest1", server["OS-EXT-SRV-ATTR:host"])
        self.assertEqual({"instance": {self._rp("dest1")}, "migration": set()},
                         {k: set(v) for k, v in self._placement().items()})

    def test_weigher_loaded_prefers_holders_then_fast_links(self) -> None:
        loaded = self.scheduler.manager.host_manager.weighers
        self.assertEqual(
            1, sum(isinstance(w, weights.DCMigrateWeigher) for w in loaded))

        # hosta and hostb are identical, so only our weigher tells them
        # apart; each case is checked both ways round.
        self.assertEqual(("hostb", "hostb"),
                         self._repick(set(), holders={"hostb"}))
        self.assertEqual(("hosta", "hosta"),
                         self._repick(set(), holders={"hosta"}))
        self.assertEqual(
            ("hostb", "hostb"),
            self._repick(set(), link_rates={"hosta": 1e6, "hostb": 1e9}))
        self.assertEqual(
            ("hosta", "hosta"),
            self._repick(set(), link_rates={"hosta": 1e9, "hostb": 1e6}))
        # A holder on a slow link still wins at the default multipliers.
        self.assertEqual(
            ("hosta", "hosta"),
            self._repick(set(), holders={"hosta"},
                         link_rates={"hosta": 1e6, "hostb": 1e9}))
        self._finish_migration()

    def test_ignores_source_earlier_destinations_and_hosts_without_trait(
            self) -> None:
        # The source and the current destination are never chosen, even as
        # holders; neither is an excluded earlier destination.
        everyone = {"src", "dest1", "hosta", "hostb", "stock"}
        self.assertEqual(
            ("hostb", "hostb"),
            self._repick({"hosta"}, holders=everyone - {"hostb"}))
        self.assertEqual(
            ("hosta", "hosta"),
            self._repick({"hostb"}, holders=everyone - {"hosta"}))

        # Left with the stock-driver host, which has room but no trait.
        before = self._placement()
        with self.assertRaises(exception.NoValidRedirectTarget) as cm:
            self._repick({"hosta", "hostb"}, holders={"stock"})
        err = cm.exception
        self.assertEqual(self.server["id"], err.instance)
        self.assertEqual(self.migration.uuid, err.migration)
        self.assertEqual("dest1, hosta, hostb, src", err.ignored_hosts)
        self.assertEqual(constants.AGENT_TRAIT, err.trait)
        self.assertIn("No valid host to redirect live migration", str(err))
        self.assertEqual(before, self._placement())

        # Control: with the trait the same request picks it, so it was the
        # trait that kept it out.
        traits = self._get_provider_traits(self._rp("stock"))
        self._set_provider_traits(self._rp("stock"),
                                  traits + [constants.AGENT_TRAIT])
        self.assertEqual(("stock", "stock"),
                         self._repick({"hosta", "hostb"}))
        self._finish_migration()

    def test_claims_are_released_or_handed_over(self) -> None:
        before = self._placement()
        self.assertEqual({"instance": {self._rp("dest1")},
                          "migration": {self._rp("src")}},
                         {k: set(v) for k, v in before.items()})

        # select_new_destination leaves placement exactly as it was.
        host, node = self._repick(set(), holders={"hosta"})
        self.assertEqual(("hosta", "hosta"), (host, node))
        self.assertEqual(before, self._placement())

        # keep_claim=True: the instance consumer holds dest1 and the new
        # host ("doubled up"); the migration consumer is untouched.
        target = repick.schedule_redirect(
            self.ctxt, self.instance, self.request_spec, self.migration,
            set(), keep_claim=True, holders={"hostb"})
        self.assertEqual(("hostb", "hostb", self._rp("hostb"), True),
                         (target.host, target.nodename,
                          target.compute_node_uuid, target.claimed))
        after = self._placement()
        self.assertEqual({self._rp("dest1"), self._rp("hostb")},
                         set(after["instance"]))
        self.assertEqual(before["instance"][self._rp("dest1")],
                         after["instance"][self._rp("dest1")])
        self.assertEqual(before["instance"][self._rp("dest1")],
                         after["instance"][self._rp("hostb")])
        self.assertEqual(before["migration"], after["migration"])

        repick.release_claim(self.ctxt, self.instance, target)
        self.assertEqual(before, self._placement())

        # The caller's objects were not changed, nor the stored spec.
        self.assertNotIn("dcmigrate_holders",
                         self.request_spec.scheduler_hints or {})
        stored = objects.RequestSpec.get_by_instance_uuid(
            self.ctxt, self.server["id"])
        self.assertNotIn("dcmigrate_holders", stored.scheduler_hints or {})
        self.assertNotIn(constants.AGENT_TRAIT, stored.root_required)
        self._finish_migration()
