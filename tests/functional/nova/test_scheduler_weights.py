"""DCMigrateWeigher inside Nova's weighing code, and how Nova loads it.

No services run here: candidates are Nova's own ``HostState`` objects
(``FakeHostState`` from Nova's unit tests) weighed by Nova's
``HostWeightHandler``, the code nova-scheduler runs. They need nova, so
they live with the harness tests (``tox -e nova-functional``).
"""

from __future__ import annotations

from typing import Any

from nova import objects
from nova.scheduler import weights as nova_weights
from nova import test
from nova.tests.unit.scheduler import fakes
import stevedore

from nova_dcmigrate.scheduler import constants
from nova_dcmigrate.scheduler import hints
from nova_dcmigrate.scheduler import weights
from nova_dcmigrate.virt.libvirt import driver as dcm_driver

CLASS_PATH = "nova_dcmigrate.scheduler.weights.DCMigrateWeigher"


def host(name: str, num_io_ops: int = 0, vcpus_used: int = 0,
         aggregates: list[Any] | None = None) -> Any:
    return fakes.FakeHostState(name, name, {
        "num_io_ops": num_io_ops, "vcpus_used": vcpus_used,
        "vcpus_total": 16, "cpu_allocation_ratio": 1.0,
        "aggregates": aggregates or []})


def spec(**scheduler_hints: list[str]) -> Any:
    return objects.RequestSpec(scheduler_hints=scheduler_hints,
                               instance_group=None)


class NoDBTestCase(test.NoDBTestCase):
    """Nova's NoDBTestCase, runnable under pytest.

    ``nova.test.TestCase._clear_attrs`` deletes the bound test method that
    pytest's unittest support deletes itself afterwards (the same fix as
    ``base.DCMigrateDriverMixin._clear_attrs``).
    """

    def _clear_attrs(self) -> None:
        name = self._testMethodName
        saved = self.__dict__.get(name)
        super()._clear_attrs()
        if saved is not None:
            self.__dict__[name] = saved


class DCMigrateWeigherTest(NoDBTestCase):

    def setUp(self) -> None:
        super().setUp()
        self.handler = nova_weights.HostWeightHandler()
        self.weigher = weights.DCMigrateWeigher()

    def weigh(self, hosts: list[Any], spec_obj: Any,
              weighers: list[Any] | None = None) -> dict[str, float]:
        weighed = self.handler.get_weighed_objects(
            weighers or [self.weigher], hosts, spec_obj)
        return {w.obj.host: w.weight for w in weighed}

    def best(self, hosts: list[Any], spec_obj: Any) -> str:
        return self.handler.get_weighed_objects(
            [self.weigher], hosts, spec_obj)[0].obj.host

    def test_components_with_default_multipliers(self) -> None:
        hosts = [host("holder", num_io_ops=8, vcpus_used=16),
                 host("fast"), host("slow", num_io_ops=4)]
        got = self.weigh(hosts, spec(
            dcmigrate_holders=["holder"],
            dcmigrate_link_rates=["fast=1000", "slow=250"]))
        # holder: 5 * 1 + 2 * 0 (no rate) + 1 * 0 (I/O and vCPUs full)
        # fast:   5 * 0 + 2 * 1            + 1 * 1
        # slow:   5 * 0 + 2 * 0.25         + 1 * (1 - 0.5 / 2)
        self.assertEqual({"holder": 5.0, "fast": 3.0, "slow": 1.25}, got)

    def test_multipliers_come_from_the_options(self) -> None:
        self.flags(holder_weight_multiplier=0.5,
                   link_rate_weight_multiplier=4.0,
                   load_weight_multiplier=0.0,
                   group="dcmigrate_scheduler")
        hosts = [host("holder"), host("fast", num_io_ops=8)]
        got = self.weigh(hosts, spec(
            dcmigrate_holders=["holder"],
            dcmigrate_link_rates=["fast=10", "holder=5"]))
        self.assertEqual({"holder": 0.5 + 2.0, "fast": 4.0}, got)

    def test_negative_holder_multiplier_avoids_holders(self) -> None:
        hosts = [host("holder"), host("other")]
        hint = spec(dcmigrate_holders=["holder"])
        self.assertEqual("holder", self.best(hosts, hint))
        self.flags(holder_weight_multiplier=-5.0,
                   group="dcmigrate_scheduler")
        self.assertEqual("other", self.best(hosts, hint))

    def test_aggregate_metadata_overrides_the_option(self) -> None:
        agg = objects.Aggregate(
            id=1, name="fast-lane",
            metadata={"dcmigrate_holder_weight_multiplier": "0"})
        hosts = [host("holder", aggregates=[agg]), host("other")]
        got = self.weigh(hosts, spec(dcmigrate_holders=["holder"]))
        # The holder's own multiplier is 0 there; both are idle.
        self.assertEqual({"holder": 1.0, "other": 1.0}, got)

    def test_hint_shapes_from_the_api(self) -> None:
        # Through the API a hint arrives as a list of strings; users may
        # also pack several hosts into one comma-separated string.
        hosts = [host("a"), host("b"), host("c")]
        got = self.weigh(hosts, spec(dcmigrate_holders=["a,c"],
                                     dcmigrate_link_rates=["b=1,c=bogus"]))
        self.assertEqual({"a": 6.0, "c": 6.0, "b": 3.0}, got)

    def test_without_hints_only_load_differs(self) -> None:
        hosts = [host("busy", num_io_ops=8), host("idle")]
        self.assertEqual({"idle": 1.0, "busy": 0.5},
                         self.weigh(hosts, objects.RequestSpec()))
        self.assertEqual("idle", self.best(hosts, spec()))

    def test_single_host_weighs_through_weigh_object(self) -> None:
        # BaseWeigher's abstract hook, used by nobody in Nova today but
        # part of the contract.
        hint = spec(dcmigrate_holders=["a"], dcmigrate_link_rates=["a=3"])
        got = self.weigher._weigh_object(host("a", num_io_ops=4), hint)
        self.assertEqual(5.0 + 2.0 + 0.75, got)

    def test_holder_beats_the_stock_weighers_at_defaults(self) -> None:
        # A holder with less free RAM and more I/O still wins against an
        # empty host when Nova's own weighers run too.
        all_weighers = [cls() for cls in self.handler.get_matching_classes(
            ["nova.scheduler.weights.all_weighers", CLASS_PATH])]
        holder = host("holder", num_io_ops=2, vcpus_used=8)
        holder.free_ram_mb, holder.free_disk_mb = 1024, 10240
        empty = host("empty")
        empty.free_ram_mb, empty.free_disk_mb = 16384, 102400
        hint = spec(dcmigrate_holders=["holder"])
        weighed = self.handler.get_weighed_objects(
            all_weighers, [empty, holder], hint)
        self.assertEqual("holder", weighed[0].obj.host)
        # Control: without our weigher the empty host wins.
        stock = [w for w in all_weighers
                 if not isinstance(w, weights.DCMigrateWeigher)]
        weighed = self.handler.get_weighed_objects(
            stock, [empty, holder], hint)
        self.assertEqual("empty", weighed[0].obj.host)


class LoadingTest(NoDBTestCase):

    def test_nova_loads_the_class_path_from_weight_classes(self) -> None:
        classes = nova_weights.HostWeightHandler().get_matching_classes(
            ["nova.scheduler.weights.all_weighers", CLASS_PATH])
        self.assertIn(weights.DCMigrateWeigher, classes)
        self.assertTrue(issubclass(weights.DCMigrateWeigher,
                                   nova_weights.BaseHostWeigher))

    def test_stevedore_entry_point(self) -> None:
        mgr = stevedore.DriverManager(
            "nova_dcmigrate.scheduler.weights", "dcmigrate",
            invoke_on_load=True)
        self.assertIsInstance(mgr.driver, weights.DCMigrateWeigher)

    def test_options_registered_on_novas_conf(self) -> None:
        import nova.conf

        self.assertEqual(
            5.0,
            nova.conf.CONF.dcmigrate_scheduler.holder_weight_multiplier)

    def test_driver_reports_the_trait_repick_requires(self) -> None:
        self.assertEqual(constants.AGENT_TRAIT, dcm_driver.AGENT_TRAIT)

    def test_hint_names(self) -> None:
        self.assertEqual("dcmigrate_holders", constants.HOLDERS_HINT)
        self.assertEqual("dcmigrate_link_rates", constants.LINK_RATES_HINT)
        # What repick puts in a RequestSpec survives Nova's field type.
        spec_obj = objects.RequestSpec(scheduler_hints={
            constants.HOLDERS_HINT: hints.encode_holders(["x"]),
            constants.LINK_RATES_HINT: hints.encode_link_rates({"x": 1.0})})
        self.assertEqual(["x"], spec_obj.scheduler_hints["dcmigrate_holders"])
