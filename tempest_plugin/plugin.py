"""Tempest plugin entry point for nova-dcmigrate (stable tempest APIs only)."""

from __future__ import annotations

import os

from tempest.test_discover import plugins

from tempest_plugin import config as dcm_config


class DcmigrateTempestPlugin(plugins.TempestPlugin):
    def load_tests(self):
        base = os.path.split(os.path.dirname(os.path.abspath(__file__)))[0]
        test_dir = "tempest_plugin/tests"
        return os.path.join(base, test_dir), base

    def register_opts(self, conf):
        conf.register_opt(dcm_config.service_option,
                          group="service_available")

    def get_opt_lists(self):
        return [("service_available", [dcm_config.service_option])]
