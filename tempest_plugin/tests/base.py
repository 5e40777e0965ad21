"""Shared helpers of the nova-dcmigrate tempest tests.

The tests are black-box: they see the compute API, placement and the
redirect API, never the hosts.  A live migration is slowed by the
deployment, not by the test: the guest image of ``[dcmigrate] image_ref``
keeps dirtying memory (the lab cloud's ``lab-guest-busy``), and the hosts'
links are shaped, so a migration lasts long enough to redirect it.
"""

from __future__ import annotations

import re
import time

from oslo_serialization import jsonutils as json
from tempest.api.compute import base
from tempest.common import waiters
from tempest import config
from tempest.lib import exceptions as lib_exc

CONF = config.CONF

_ALIVE_RE = re.compile(r"^alive (\d+(?:\.\d+)?)", re.MULTILINE)


class DcmigrateBaseTest(base.BaseV2ComputeAdminTest):
    """Admin compute test with the redirect client and migration helpers."""

    # 2.25: block_migration 'auto'; 2.30: host with validation; 2.59:
    # migration uuids in the in-progress list.
    min_microversion = "2.59"
    max_microversion = "latest"
    credentials = ["primary", "admin"]
    create_default_network = False

    @classmethod
    def skip_checks(cls):
        super().skip_checks()
        if not CONF.service_available.dcmigrate:
            raise cls.skipException("nova-dcmigrate is not deployed")
        if not CONF.compute_feature_enabled.live_migration:
            raise cls.skipException("live migration is disabled")

    @classmethod
    def setup_clients(cls):
        super().setup_clients()
        cls.admin_servers = cls.os_admin.servers_client
        cls.migrations = cls.os_admin.migrations_client
        cls.placement = cls.os_admin.placement_client
        if CONF.dcmigrate_feature_enabled.api:
            cls.redirects = cls.os_admin.dcmigrate.RedirectClient()
            cls.member_redirects = cls.os_primary.dcmigrate.RedirectClient()

    # -- hosts -----------------------------------------------------------

    @classmethod
    def compute_hosts(cls) -> list[str]:
        services = cls.os_admin.services_client.list_services(
            binary="nova-compute")["services"]
        return sorted(s["host"] for s in services
                      if s["state"] == "up" and s["status"] == "enabled")

    def three_hosts(self) -> list[str]:
        hosts = self.compute_hosts()
        if len(hosts) < CONF.dcmigrate.min_compute_nodes:
            raise self.skipException(
                "needs %d enabled compute hosts, found %s"
                % (CONF.dcmigrate.min_compute_nodes, hosts))
        return hosts

    # -- servers ---------------------------------------------------------

    def boot_on(self, host: str, busy: bool = True) -> dict:
        kwargs = {"availability_zone": "nova:%s" % host,
                  "wait_until": "ACTIVE"}
        if busy and CONF.dcmigrate.image_ref:
            kwargs["image_id"] = CONF.dcmigrate.image_ref
        if busy and CONF.dcmigrate.flavor_ref:
            kwargs["flavor"] = CONF.dcmigrate.flavor_ref
        server = self.create_test_server(clients=self.os_admin, **kwargs)
        self.assertEqual(host, self.get_host_for_server(server["id"]))
        return server

    def live_migrate(self, server_id: str, host: str | None) -> dict:
        """Start a live migration; returns it once it is 'running'."""
        self.admin_servers.live_migrate_server(
            server_id, host=host, block_migration="auto")
        deadline = time.monotonic() + CONF.dcmigrate.migration_running_timeout
        while time.monotonic() < deadline:
            migs = self.in_progress_migrations(server_id)
            for mig in migs:
                # Memory moving (the source's monitor has reported it,
                # every 5 s): the migration is in its copy phase.
                if (mig["status"] == "running" and
                        mig.get("memory_processed_bytes")):
                    return mig
            time.sleep(CONF.dcmigrate.build_interval)
        self.fail("live migration of %s never reported 'running' in %d s"
                  % (server_id, CONF.dcmigrate.migration_running_timeout))

    def in_progress_migrations(self, server_id: str) -> list[dict]:
        """GET /servers/{id}/migrations without tempest's response schema,
        which knows no microversion past 2.58 (2.59 adds the uuid)."""
        resp, body = self.admin_servers.get(
            "servers/%s/migrations" % server_id)
        self.assertEqual(200, resp.status)
        return json.loads(body)["migrations"]

    def wait_active(self, server_id: str) -> None:
        waiters.wait_for_server_status(self.admin_servers, server_id,
                                       "ACTIVE")

    def wait_redirect(self, server_id: str, redirect_id: str,
                      states=("completed",)) -> dict:
        """Poll a redirect until it finishes; assert its final state."""
        deadline = time.monotonic() + CONF.dcmigrate.build_timeout
        record = {}
        while time.monotonic() < deadline:
            record = self.redirects.show_redirect(
                server_id, redirect_id)["redirect"]
            if record["state"] in ("completed", "failed", "rolled-back"):
                self.assertIn(record["state"], states, record)
                return record
            time.sleep(CONF.dcmigrate.build_interval)
        self.fail("redirect %s did not finish: %s" % (redirect_id, record))

    def migration_record(self, migration_uuid: str) -> dict:
        migs = self.migrations.list_migrations(
            migration_type="live-migration")["migrations"]
        for mig in migs:
            if mig.get("uuid") == migration_uuid:
                return mig
        self.fail("migration %s not listed" % migration_uuid)

    def redirect_events(self, server_id: str, redirect_id: str
                        ) -> list[dict]:
        """The events of a redirect's own instance action
        (``dcmigrate-redirect``, request id ``req-<redirect id>``)."""
        actions = self.admin_servers.list_instance_actions(
            server_id)["instanceActions"]
        request_id = "req-%s" % redirect_id
        self.assertIn(request_id, [a["request_id"] for a in actions
                                   if a["action"] == "dcmigrate-redirect"],
                      actions)
        detail = self.admin_servers.show_instance_action(
            server_id, request_id)["instanceAction"]
        return [e for e in detail.get("events", [])
                if e["event"] == "dcmigrate_redirect"]

    # -- checks ----------------------------------------------------------

    def alive_uptime(self, server_id: str) -> float | None:
        """The guest's last ``alive <uptime>`` console line.  The console
        log is truncated when the guest moves (Nova's ``append='off'``),
        so a rising uptime is the only proof of life across a move."""
        output = self.admin_servers.get_console_output(
            server_id, length=50)["output"]
        found = _ALIVE_RE.findall(output)
        return float(found[-1]) if found else None

    def assert_guest_alive(self, server_id: str, before: float | None,
                           running_since: float | None = None) -> None:
        """A new ``alive`` line with an uptime above ``before``.

        With ``running_since`` (a ``time.monotonic()`` taken after
        ``before`` was read) the uptime must also have gained at least
        half the wall time since then: the guest clock (kvmclock) stands
        still while QEMU is stopped, so a guest paused in between fails.
        """
        gain = 0.0
        if running_since is not None:
            gain = (time.monotonic() - running_since) / 2
        deadline = time.monotonic() + 60
        uptime = None
        while time.monotonic() < deadline:
            uptime = self.alive_uptime(server_id)
            if uptime is not None and (before is None or
                                       uptime > before + gain):
                return
            time.sleep(2)
        self.fail("guest of %s shows no rising 'alive' uptime (before "
                  "%s, wanted above %s, now %s): not running after the "
                  "move" % (server_id, before,
                            None if before is None else before + gain,
                            uptime))

    def assert_only_allocation_on(self, server_id: str, host: str) -> None:
        """Placement: the server consumes only the final host's node."""
        allocs = self.placement.list_allocations(server_id)["allocations"]
        providers = self.os_admin.resource_providers_client
        names = sorted(providers.show_resource_provider(rp)["name"]
                       for rp in allocs)
        hypervisor = self.hypervisor_of(host)
        self.assertEqual([hypervisor], names,
                         "allocations of %s: %s" % (server_id, allocs))

    def hypervisor_of(self, host: str) -> str:
        hvs = self.os_admin.hypervisor_client.list_hypervisors(
            detail=True)["hypervisors"]
        for hv in hvs:
            if hv["service"]["host"] == host:
                return hv["hypervisor_hostname"]
        self.fail("no hypervisor for host %s" % host)

    def abort_migration(self, server_id: str, migration_id: int) -> None:
        """DELETE /servers/{id}/migrations/{mid} (no tempest method)."""
        resp, _ = self.admin_servers.delete(
            "servers/%s/migrations/%s" % (server_id, migration_id))
        self.assertEqual(202, resp.status)

    def assert_http(self, exc_class, func, *args, **kwargs):
        try:
            func(*args, **kwargs)
        except exc_class as err:
            return err
        except lib_exc.RestClientException as err:
            self.fail("expected %s, got %s" % (exc_class.__name__, err))
        self.fail("expected %s, the call succeeded" % exc_class.__name__)
