"""Tempest plugin entry point for nova-dcmigrate (stable tempest APIs only)."""

from __future__ import annotations

import os

from tempest import config
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
        config.register_opt_group(conf, dcm_config.dcmigrate_group,
                                  dcm_config.DcmigrateGroup)
        config.register_opt_group(conf, dcm_config.feature_group,
                                  dcm_config.FeatureGroup)

    def get_opt_lists(self):
        return [
            ("service_available", [dcm_config.service_option]),
            (dcm_config.dcmigrate_group.name, dcm_config.DcmigrateGroup),
            (dcm_config.feature_group.name, dcm_config.FeatureGroup),
        ]

    def get_service_clients(self):
        params = config.service_client_config("dcmigrate")
        params.update({
            "name": "dcmigrate",
            "service_version": "dcmigrate.v1",
            "module_path": __package__ + ".services.redirect_client",
            "client_names": ["RedirectClient"],
        })
        return [params]
