"""Settings the lab cloud shares with the gate job (``.zuul.yaml``).

Why: the gate job cannot run on the lab machine.  The lab cloud takes
these values from here (devstack variables for the plugin's functions,
tempest options, the tempest regex) and a unit test
(``tests/unit/lab/test_zuul.py``) checks that ``.zuul.yaml`` sets the same
ones, so that the two cannot drift apart unnoticed.
"""

from __future__ import annotations

#: devstack variables (``devstack_localrc`` of the job's controller).
DEVSTACK_LOCALRC: dict[str, str] = {
    "DCMIGRATE_TRANSPORT": "agents",
    "DCMIGRATE_TEMPEST_MIN_COMPUTE_NODES": "3",
    # The automatic-redirect scenario: the trigger that reacts to a
    # disabled destination, evaluated every second, acting 2 s after an
    # attempt began (doc/source/triggers.rst).
    "DCMIGRATE_AUTO_TRIGGERS": "destination_disabled",
    "DCMIGRATE_AUTO_INTERVAL": "1",
    "DCMIGRATE_AUTO_MIN_INTERVAL": "2",
    "LIBVIRT_TYPE": "qemu",
}

#: Variables every compute node (the job's subnodes too) needs.
COMPUTE_LOCALRC: tuple[str, ...] = (
    "DCMIGRATE_TRANSPORT", "DCMIGRATE_AUTO_TRIGGERS",
    "DCMIGRATE_AUTO_INTERVAL", "DCMIGRATE_AUTO_MIN_INTERVAL",
    "LIBVIRT_TYPE")

#: tempest.conf options (the job's ``test-config`` of ``local.conf``).
TEMPEST_CONF: dict[str, dict[str, str]] = {
    "compute": {"min_compute_nodes": "3"},
    "compute-feature-enabled": {
        "live_migration": "True",
        # The gate's nodes have local disks: block migrations work.  The
        # lab shares instances_path and runs the one test that asks for
        # an explicit block migration with this off (NOVA_SHARED_STORAGE).
        "block_migration_for_live_migration": "True",
        "volume_backed_live_migration": "False"},
}

#: Nova's live-migration tests that apply (block_migration 'auto', or the
#: project manager's workflow, which asks for block_migration from
#: ``block_migration_for_live_migration``).
NOVA_AUTO = (r"^tempest\.api\.compute\.admin\.test_live_migration\."
             r"LiveAutoBlockMigrationV225Test")
NOVA_SHARED_STORAGE = (r"^tempest\.api\.compute\.admin\.test_live_migration"
                       r"\.LiveMigrationManagerWorkflowTest")
PLUGIN = r"^nova_dcmigrate_tempest_plugin\.tests\."

#: The gate job's ``tempest_test_regex``.
TEMPEST_REGEX = "|".join((NOVA_AUTO, NOVA_SHARED_STORAGE, PLUGIN))
