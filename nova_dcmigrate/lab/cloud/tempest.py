"""Configure and run tempest against the lab cloud.

Nova's upstream live-migration tests that apply to shared instance
storage without Neutron ports, plus our plugin's tests.  Shared storage:
``block_migration='auto'`` resolves to a plain live migration, so the
2.25+ classes apply (``LiveAutoBlockMigrationV225Test``); the 2.24 class
asks for an explicit block migration, which Nova refuses on shared
storage (see doc/source/lab-cloud.rst).  The project manager's workflow
(``LiveMigrationManagerWorkflowTest``) takes ``block_migration`` from
``block_migration_for_live_migration``, which the 2.25 class needs on
(it guards those tests): it runs in a second invocation with a copy of
the configuration that has the flag off.
"""

from __future__ import annotations

import os
from pathlib import Path
import shutil
import subprocess
import sys
from typing import Any

from nova_dcmigrate.lab.cloud import control
from nova_dcmigrate.lab.cloud import devstack
from nova_dcmigrate.lab.cloud import gate
from nova_dcmigrate.lab.cloud import procs

#: What ``make tempest`` runs with the gate's configuration (stestr regex;
#: the plugin's package is installed as ``nova_dcmigrate_tempest_plugin``).
DEFAULT_REGEX = f"{gate.NOVA_AUTO}|{gate.PLUGIN}"
#: What it runs after that with ``block_migration_for_live_migration``
#: off (shared instances_path: no block migration).
SHARED_STORAGE_REGEX = gate.NOVA_SHARED_STORAGE
#: The configuration file of that second invocation.
SHARED_STORAGE_CONF = "tempest-shared-storage.conf"


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
                    "build_timeout": 300,
                    "max_microversion": "latest",
                    "endpoint_type": "publicURL",
                    **gate.TEMPEST_CONF["compute"]},
        "compute-feature-enabled": {
            # The gate's (gate.py); see the module doc.
            **gate.TEMPEST_CONF["compute-feature-enabled"],
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
        **gate.DEVSTACK_LOCALRC,
        "CLOUD_ENABLED_SERVICES": "dcmigrate-agent,dcmigrate-scheduler"
                                  + (",dcmigrate-api" if api_enabled
                                     else ""),
        "TEMPEST_CONFIG": str(conf),
    }, plane.setup_log)
    shared = tdir / "etc" / SHARED_STORAGE_CONF
    shutil.copyfile(conf, shared)
    control.write_ini(shared, {"compute-feature-enabled": {
        "block_migration_for_live_migration": "False"}})
    return tdir


def forget(tdir: Path) -> None:
    """Unregister the workspace made by configure() (~/.tempest)."""
    subprocess.run([f"{sys.prefix}/bin/tempest", "workspace", "remove",
                    "--name", tdir.parent.name], capture_output=True,
                   check=False)


def run(tdir: Path, regex: str = DEFAULT_REGEX,
        concurrency: int = 1, conf: Path | None = None) -> int:
    env = dict(os.environ)
    env["PATH"] = f"{sys.prefix}/bin:{env.get('PATH', '')}"
    extra = ["--config-file", str(conf)] if conf else []
    proc = subprocess.run(
        [f"{sys.prefix}/bin/tempest", "run", "--regex", regex,
         "--concurrency", str(concurrency), *extra], cwd=tdir, env=env)
    return proc.returncode


def run_default(tdir: Path) -> int:
    """What ``make tempest`` runs: both invocations (see the module doc);
    the second runs also when the first failed."""
    rc = run(tdir, DEFAULT_REGEX)
    rc2 = run(tdir, SHARED_STORAGE_REGEX,
              conf=tdir / "etc" / SHARED_STORAGE_CONF)
    return rc or rc2
