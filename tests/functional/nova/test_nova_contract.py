"""Contract tests: every private Nova name nova-dcmigrate uses.

Nova offers no public hook for what a redirect does (see
``doc/source/upgrading-nova.rst``), so the driver and the orchestration
call private methods and read private attributes of nova 34.0.0. A Nova
upgrade that renames, removes or re-shapes one of them must fail here, in
one obvious test named after it, not subtly in a redirect. Each test
checks that the name exists and that the call nova-dcmigrate makes binds
to its signature (``inspect.Signature.bind`` with the same positional and
keyword shape as our call site); attributes are checked on real objects.

The list here and the table in the docs must stay in step
(``test_every_private_name_is_listed_in_the_docs``).
"""

from __future__ import annotations

import functools
import inspect
import pathlib
import types
from typing import Any

from nova.compute import manager as nova_manager
from nova.conductor.tasks import live_migrate
from nova.tests.functional import integrated_helpers
from nova.tests.functional.libvirt import base as libvirt_base
from nova.virt.libvirt import driver as libvirt_driver
from nova.virt.libvirt import guest as libvirt_guest
from nova.virt.libvirt import migration as libvirt_migrate
import testtools

from nova_dcmigrate.virt.libvirt import driver as dcm_driver
from tests.functional.nova import base

X = object()  # any argument
DOC = (pathlib.Path(__file__).parents[3] / "doc" / "source" /
       "upgrading-nova.rst")

#: Every private Nova name we use -> the test guarding it.
PRIVATE_NAMES = {
    "ComputeManager._get_instance_block_device_info":
        "test_manager_get_instance_block_device_info",
    "ComputeManager._get_neutron_events_for_live_migration":
        "test_manager_get_neutron_events_for_live_migration",
    "ComputeManager._neutron_failed_live_migration_callback":
        "test_manager_neutron_failed_live_migration_callback",
    "ComputeManager._remove_remote_volume_connections":
        "test_manager_remove_remote_volume_connections",
    "ComputeManager._rollback_volume_bdms":
        "test_manager_rollback_volume_bdms",
    "ComputeManager._live_migration_cleanup_flags":
        "test_manager_live_migration_cleanup_flags",
    "ComputeManager._post_live_migration_update_host (source_bdms)":
        "test_manager_post_method_keeps_source_bdms",
    "ComputeVirtAPI._compute": "test_virtapi_compute",
    "LiveMigrationTask._get_request_spec_for_select_destinations":
        "test_task_get_request_spec_for_select_destinations",
    "LibvirtDriver._live_migration": "test_driver_live_migration",
    "LibvirtDriver._live_migration_monitor":
        "test_driver_live_migration_monitor",
    "LibvirtDriver._live_migration_operation":
        "test_driver_live_migration_operation",
    "LibvirtDriver._live_migration_flags": "test_driver_migration_flags",
    "LibvirtDriver._block_migration_flags": "test_driver_migration_flags",
    "Guest._domain": "test_guest_domain",
    "nova.virt.libvirt.driver.libvirt": "test_driver_module_libvirt",
}


def _bind(fn: Any, *args: Any, **kwargs: Any) -> None:
    """Our call shape must bind to ``fn``'s signature."""
    inspect.signature(fn).bind(*args, **kwargs)


class NovaPrivateNamesTest(testtools.TestCase):
    """One test per private name (signature shape of our call)."""

    M = nova_manager.ComputeManager
    D = libvirt_driver.LibvirtDriver

    # -- compute manager (compute/redirect.py) -----------------------------

    def test_manager_get_instance_block_device_info(self) -> None:
        _bind(self.M._get_instance_block_device_info, X, X, X, bdms=X)

    def test_manager_get_neutron_events_for_live_migration(self) -> None:
        _bind(self.M._get_neutron_events_for_live_migration, X)

    def test_manager_neutron_failed_live_migration_callback(self) -> None:
        # Handed as error_callback to wait_for_instance_event, which
        # calls it with (event_name, instance).
        _bind(self.M._neutron_failed_live_migration_callback, X, X)
        _bind(nova_manager.ComputeVirtAPI.wait_for_instance_event, X, X, X,
              timeout=X, error_callback=X)

    def test_manager_remove_remote_volume_connections(self) -> None:
        _bind(self.M._remove_remote_volume_connections, X, X, X, X, X)

    def test_manager_rollback_volume_bdms(self) -> None:
        _bind(self.M._rollback_volume_bdms, X, X, X, X, X)

    def test_manager_live_migration_cleanup_flags(self) -> None:
        _bind(self.M._live_migration_cleanup_flags, X, X, migr_ctxt=X)

    def test_manager_rollback_live_migration(self) -> None:
        # compute/restart.py: a restarted source rolls an interrupted
        # redirect back with Nova's own rollback.
        _bind(self.M._rollback_live_migration, X, X, X, X,
              migrate_data=X, migration_status=X, source_bdms=X)

    def test_manager_post_method_keeps_source_bdms(self) -> None:
        # The driver reads post_method.keywords["source_bdms"]: Nova's
        # _do_live_migration passes a partial of this method with it.
        _bind(self.M._post_live_migration_update_host, X, X, X, X, X, X,
              source_bdms=X)
        partial = functools.partial(
            self.M._post_live_migration_update_host, source_bdms=[])
        self.assertEqual([], partial.keywords["source_bdms"])

    def test_virtapi_compute(self) -> None:
        compute = types.SimpleNamespace(reportclient=X)
        self.assertIs(compute, nova_manager.ComputeVirtAPI(compute)._compute)

    # -- conductor (scheduler/repick.py) -----------------------------------

    def test_task_get_request_spec_for_select_destinations(self) -> None:
        _bind(live_migrate.LiveMigrationTask.__init__, X, X, X, X, X, X, X,
              X, X, X, X, request_spec=X)
        _bind(live_migrate.LiveMigrationTask.
              _get_request_spec_for_select_destinations, X, X)

    # -- libvirt driver (virt/libvirt/driver.py, transport.py) -------------

    def test_driver_live_migration(self) -> None:
        _bind(self.D._live_migration, X, X, X, X, X, X, X, X)

    def test_driver_live_migration_monitor(self) -> None:
        _bind(self.D._live_migration_monitor, X, X, X, X, X, X, X, X, X, X,
              X)

    def test_driver_live_migration_operation(self) -> None:
        # Also the funcName of Nova's "Live Migration failure" ERROR line
        # that the stopped-job log filter lowers.
        _bind(self.D._live_migration_operation, X, X, X, X, X, X, X, X)
        self.assertEqual("_live_migration_operation",
                         self.D._live_migration_operation.__name__)

    def test_guest_domain(self) -> None:
        domain = object()
        self.assertIs(domain, libvirt_guest.Guest(domain)._domain)

    def test_driver_module_libvirt(self) -> None:
        self.assertTrue(hasattr(libvirt_driver, "libvirt"))

    def test_public_names_used_with_our_call_shapes(self) -> None:
        # Not private, but the shapes matter as much.
        _bind(libvirt_migrate.find_job_type, X, X)
        _bind(libvirt_guest.JobInfo.__init__, X, type=X)
        for name in ("get_job_info", "migrate_configure_max_downtime",
                     "abort_job", "migrate"):
            self.assertTrue(callable(getattr(libvirt_guest.Guest, name)))

    def test_every_private_name_is_listed_in_the_docs(self) -> None:
        text = DOC.read_text()
        for name, test in PRIVATE_NAMES.items():
            self.assertTrue(hasattr(self, test) or
                            hasattr(NovaPrivateAttributesTest, test), test)
            self.assertIn(name.split(" ")[0], text)
            self.assertIn(test, text)


class NovaPrivateAttributesTest(base.DCMigrateDriverMixin,
                                libvirt_base.ServersTestBase,
                                integrated_helpers.InstanceHelperMixin):
    """Attributes only a started nova-compute has."""

    def test_driver_migration_flags(self) -> None:
        self.start_compute("src")
        driver = self.computes["src"].driver
        self.assertIsInstance(driver, dcm_driver.DCMigrateLibvirtDriver)
        for name in ("_live_migration_flags", "_block_migration_flags"):
            self.assertIsInstance(getattr(driver, name), int, name)
        # And the manager the driver finds through the virtapi.
        self.assertIs(self.computes["src"].manager, driver.virtapi._compute)
