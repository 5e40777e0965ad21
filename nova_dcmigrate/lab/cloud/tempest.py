"""Configure and run tempest against the lab cloud.

Nova's upstream live-migration tests that apply to shared instance
storage without Neutron ports, plus our plugin's tests.  Shared storage:
``block_migration='auto'`` resolves to a plain live migration, so only the
2.25+ classes apply (``LiveAutoBlockMigrationV225Test``) and the project
manager workflow; the 2.24 class asks for an explicit block migration,
which Nova refuses on shared storage (see doc/source/lab-cloud.rst).
"""

from __future__ import annotations

import os
from pathlib import Path
import subprocess
import sys
from typing import Any

from nova_dcmigrate.lab.cloud import control
from nova_dcmigrate.lab.cloud import devstack
from nova_dcmigrate.lab.cloud import procs

#: What ``make tempest`` runs (stestr regex; the plugin's package is
#: installed as ``nova_dcmigrate_tempest_plugin``).
DEFAULT_REGEX = (
    r"^tempest\.api\.compute\.admin\.test_live_migration\."
    r"(LiveAutoBlockMigrationV225Test|LiveMigrationManagerWorkflowTest)"
    r"|^nova_dcmigrate_tempest_plugin\.tests\.")


def configure(plane: control.ControlPlane, info: dict[str, Any],
              repo: Path, api_enabled: bool) -> Path:
    tdir = plane.dir / "tempest"
    # Workspaces are registered by name in ~/.tempest: one per cloud run,
    # removed again by forget().
    procs.run([f"{sys.prefix}/bin/tempest", "init", "--name",
               plane.dir.name, str(tdir)], plane.setup_log)
    conf = tdir / "etc" / "tempest.conf"
    image = info["images"]["lab-guest"]
    control.write_ini(conf, {
        "DEFAULT": {"log_file": plane.log_dir / "tempest.log"},
        "auth": {"admin_username": "admin",
                 "admin_password": plane.password,
                 "admin_project_name": "admin",
                 "admin_domain_name": "Default",
                 "use_dynamic_credentials": "True",
                 "create_isolated_networks": "False",
                 "tempest_roles": "member"},
        "identity": {"uri_v3": plane.url("keystone", "/v3"),
                     "auth_version": "v3", "region": "RegionOne",
                     "v3_endpoint_type": "public"},
        "identity-feature-enabled": {"api_v2": "False"},
        "enforce_scope": {"nova": "True"},
        "service_available": {"nova": "True", "glance": "True",
                              "neutron": "True", "cinder": "False",
                              "swift": "False", "placement": "True"},
        "compute": {"image_ref": image, "image_ref_alt": image,
                    "flavor_ref": "42", "flavor_ref_alt": "43",
                    "min_compute_nodes": 3, "build_timeout": 300,
                    "max_microversion": "latest",
                    "endpoint_type": "publicURL"},
        "compute-feature-enabled": {
            "live_migration": "True",
            # Only the 2.25+ classes run ('auto'); see the module doc.
            "block_migration_for_live_migration": "True",
            "volume_backed_live_migration": "False",
            "can_migrate_between_any_hosts": "True",
            "nova_policy_roles": "admin,manager,member,reader,service",
            "console_output": "True", "serial_console": "False",
            "vnc_console": "False", "pause": "True"},
        "network-feature-enabled": {"api_extensions": ""},
        "validation": {"run_validation": "False"},
        "dcmigrate": {"image_ref": info["images"]["lab-guest-busy"],
                      "flavor_ref": "43"},
    })
    devstack.run_functions(repo, ["configure_tempest_for_dcmigrate"], {
        "CLOUD_ENABLED_SERVICES": "dcmigrate-agent,dcmigrate-scheduler"
                                  + (",dcmigrate-api" if api_enabled
                                     else ""),
        "TEMPEST_CONFIG": str(conf),
    }, plane.setup_log)
    return tdir


def forget(tdir: Path) -> None:
    """Unregister the workspace made by configure() (~/.tempest)."""
    subprocess.run([f"{sys.prefix}/bin/tempest", "workspace", "remove",
                    "--name", tdir.parent.name], capture_output=True,
                   check=False)


def run(tdir: Path, regex: str = DEFAULT_REGEX,
        concurrency: int = 1) -> int:
    env = dict(os.environ)
    env["PATH"] = f"{sys.prefix}/bin:{env.get('PATH', '')}"
    proc = subprocess.run(
        [f"{sys.prefix}/bin/tempest", "run", "--regex", regex,
         "--concurrency", str(concurrency)], cwd=tdir, env=env)
    return proc.returncode
