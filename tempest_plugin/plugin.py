"""Tempest plugin entry point for nova-dcmigrate (stable tempest APIs only)."""

from __future__ import annotations

import os

from tempest.test_discover import plugins

# Relative: the folder tempest_plugin/ is installed as the package
# nova_dcmigrate_tempest_plugin (setup.py).
from . import config as dcm_config


class DcmigrateTempestPlugin(plugins.TempestPlugin):
    def load_tests(self):
        # Wherever the package is installed, under whatever name.
        package_dir = os.path.dirname(os.path.abspath(__file__))
        base = os.path.dirname(package_dir)
        return os.path.join(package_dir, "tests"), base

    def register_opts(self, conf):
        conf.register_opt(dcm_config.service_option,
                          group="service_available")

    def get_opt_lists(self):
        return [("service_available", [dcm_config.service_option])]
