"""nova-compute loads DCMigrateLibvirtDriver from ``compute_driver``.

nova-compute's ``main()`` calls ``nova.service.Service.create(
binary='nova-compute', ...)``, whose ComputeManager calls
``nova.virt.driver.load_compute_driver``; that imports
``'nova.virt.' + [DEFAULT] compute_driver``. The harness starts its compute
services through the same ``Service.create`` call.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os

import fixtures
from nova.conf import compute as nova_conf_compute
from nova.tests.functional.libvirt import base as libvirt_base
from nova import utils as nova_utils
from nova.virt import driver as virt_driver
from nova.virt import virtapi
import nova
import nova.virt
from oslo_config import cfg
from oslo_utils import importutils

from nova_dcmigrate.virt.libvirt import driver as dcm_driver
from tests.functional.nova import base

#: Our distribution name, as pip records it.
DIST = "nova-dcmigrate"

NOVA_CONF = """\
[DEFAULT]
compute_driver = dcmigrate.DCMigrateLibvirtDriver
"""


class DriverLoadingTest(base.DCMigrateDriverMixin,
                        libvirt_base.ServersTestBase):
    """The documented compute_driver value, through Nova's own loader."""

    def test_compute_driver_value(self) -> None:
        self.assertEqual("dcmigrate.DCMigrateLibvirtDriver",
                         base.COMPUTE_DRIVER)
        self.assertIs(
            dcm_driver.DCMigrateLibvirtDriver,
            importutils.import_class("nova.virt." + base.COMPUTE_DRIVER))

    def test_shim_package_is_installed_inside_nova_virt(self) -> None:
        # Found by the ordinary import system in nova's own nova/virt/
        # directory (as pip installed it), not through a sys.modules alias
        # or an extra search path.
        shim = importlib.import_module(base.SHIM_MODULE)
        self.assertIs(dcm_driver.DCMigrateLibvirtDriver,
                      shim.DCMigrateLibvirtDriver)
        self.assertEqual(list(nova.virt.__path__),
                         [os.path.dirname(nova.virt.__file__)])
        self.assertEqual(
            os.path.join(os.path.dirname(nova.virt.__file__), "dcmigrate",
                         "__init__.py"),
            shim.__file__)

    def test_shim_is_owned_by_our_distribution_only(self) -> None:
        # pip uninstalls what a distribution's RECORD lists: ours lists the
        # shim and no file of nova's, and nova's does not list the shim.
        # Look next to nova only: the source tree's egg-info may be on
        # sys.path too.
        site = [os.path.dirname(os.path.dirname(nova.__file__))]
        ours, novas = (
            {str(f) for f in next(iter(importlib.metadata.distributions(
                name=name, path=site))).files or ()}
            for name in (DIST, "nova"))
        shim = "nova/virt/dcmigrate/__init__.py"
        self.assertIn(shim, ours)
        self.assertNotIn(shim, novas)
        ours_in_nova = {f for f in ours if f.startswith("nova/")
                        and not f.endswith(".pyc")}
        self.assertEqual({shim}, ours_in_nova)
        self.assertIn("nova/virt/__init__.py", novas)

    def test_native_threading_mode(self) -> None:
        if os.environ.get("OS_NOVA_DISABLE_EVENTLET_PATCHING") != "True":
            self.skipTest("run in eventlet mode")
        self.assertTrue(nova_utils.concurrency_mode_threading())

    def test_load_compute_driver(self) -> None:
        self.flags(compute_driver=base.COMPUTE_DRIVER)
        drv = virt_driver.load_compute_driver(virtapi.VirtAPI())
        self.assertIsInstance(drv, dcm_driver.DCMigrateLibvirtDriver)
        self.assertIsInstance(drv, virt_driver.ComputeDriver)

    def test_full_module_path_is_not_accepted(self) -> None:
        # Why the nova.virt shim exists: Nova prefixes every value.
        self.assertRaises(
            SystemExit, virt_driver.load_compute_driver, virtapi.VirtAPI(),
            "nova_dcmigrate.virt.libvirt.driver.DCMigrateLibvirtDriver")

    def test_nova_compute_service_from_config_file(self) -> None:
        # The value as an operator writes it, parsed by oslo.config with
        # Nova's own option definition.
        tmp = self.useFixture(fixtures.TempDir()).path
        path = os.path.join(tmp, "nova.conf")
        with open(path, "w") as f:
            f.write(NOVA_CONF)
        conf = cfg.ConfigOpts()
        conf.register_opts(nova_conf_compute.compute_opts)
        conf(["--config-file", path], project="nova")
        self.flags(compute_driver=conf.compute_driver)

        hostname = self.start_compute("compute1")

        compute = self.computes[hostname]
        self.assertIs(dcm_driver.DCMigrateLibvirtDriver,
                      type(compute.manager.driver))
        self.assertEqual("nova-compute", compute.binary)
        services = self.admin_api.get_services(binary="nova-compute",
                                               host=hostname)
        self.assertEqual(["up"], [s["state"] for s in services])
        hypervisors = self.admin_api.api_get(
            "/os-hypervisors?hypervisor_hostname_pattern=%s" % hostname
        ).body["hypervisors"]
        self.assertEqual(1, len(hypervisors))
