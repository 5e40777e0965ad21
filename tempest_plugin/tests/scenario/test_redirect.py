"""Redirect running live migrations through Nova, end to end.

Needs three compute hosts running DCMigrateLibvirtDriver and agents, and
a guest that keeps dirtying memory (``[dcmigrate] image_ref``) so that a
migration is still running when it is redirected.
"""

from __future__ import annotations

import time

from tempest import config
from tempest.lib import decorators

from .. import base

CONF = config.CONF


class RedirectScenarioTest(base.DcmigrateBaseTest):

    @classmethod
    def skip_checks(cls):
        super().skip_checks()
        if not CONF.dcmigrate_feature_enabled.api:
            raise cls.skipException("the redirect API is not deployed")

    def _start(self):
        hosts = self.three_hosts()
        src, dst = hosts[0], hosts[1]
        server = self.boot_on(src)
        before = self.alive_uptime(server["id"])
        migration = self.live_migrate(server["id"], dst)
        return server, hosts, migration, before

    def _check_moved(self, server, migration, host, old, before,
                     redirect_id):
        sid = server["id"]
        self.wait_active(sid)
        self.assertEqual(host, self.get_host_for_server(sid))
        record = self.migration_record(migration["uuid"])
        self.assertEqual("completed", record["status"], record)
        self.assertEqual(host, record["dest_compute"], record)
        events = self.redirect_events(sid, redirect_id)
        self.assertEqual(1, len(events), events)
        self.assertEqual("Success", events[0]["result"], events)
        self.assert_guest_alive(sid, before)
        self.assert_only_allocation_on(sid, host)
        self.assertNotIn(old, [host])

    @decorators.attr(type="multinode")
    @decorators.idempotent_id("6c1d0a55-3f3e-4a8e-a3d2-8c7b0c1e2b01")
    def test_redirect_to_named_host(self):
        server, hosts, migration, before = self._start()
        new = hosts[2]
        body = self.redirects.create_redirect(server["id"], host=new,
                                              reason="tempest")
        record = body["redirect"]
        self.assertEqual(new, record["new_destination"])
        self.assertEqual(hosts[1], record["old_destination"])
        final = self.wait_redirect(server["id"], record["id"])
        self.assertEqual(migration["uuid"], final["migration_id"])
        self._check_moved(server, migration, new, hosts[1], before,
                          record["id"])
        listed = self.redirects.list_redirects(server["id"])["redirects"]
        self.assertEqual(record["id"], listed[0]["id"])

    @decorators.attr(type="multinode")
    @decorators.idempotent_id("6c1d0a55-3f3e-4a8e-a3d2-8c7b0c1e2b02")
    def test_redirect_repick(self):
        server, hosts, migration, before = self._start()
        record = self.redirects.create_redirect(server["id"])["redirect"]
        final = self.wait_redirect(server["id"], record["id"])
        # Three hosts: the scheduler ignores source and old destination.
        self.assertEqual(hosts[2], final["new_destination"], final)
        self._check_moved(server, migration, hosts[2], hosts[1], before,
                          record["id"])

    @decorators.attr(type="multinode")
    @decorators.idempotent_id("6c1d0a55-3f3e-4a8e-a3d2-8c7b0c1e2b03")
    def test_two_redirects_in_a_row(self):
        server, hosts, migration, before = self._start()
        first = self.redirects.create_redirect(
            server["id"], host=hosts[2])["redirect"]
        self._wait_running_again(server["id"], first["id"])
        # Back to the first destination, which still holds pages.
        second = self.redirects.create_redirect(
            server["id"], host=hosts[1])["redirect"]
        self.wait_redirect(server["id"], second["id"])
        self._check_moved(server, migration, hosts[1], hosts[2], before,
                          second["id"])

    def _wait_running_again(self, server_id, redirect_id):
        deadline = time.monotonic() + CONF.dcmigrate.build_timeout
        while time.monotonic() < deadline:
            rec = self.redirects.show_redirect(server_id,
                                               redirect_id)["redirect"]
            if rec["state"] in ("running", "completed"):
                self.assertEqual("running", rec["state"],
                                 "the migration ended before the second "
                                 "redirect: the guest is too small or the "
                                 "links too fast")
                return rec
            self.assertNotIn(rec["state"], ("failed", "rolled-back"), rec)
            time.sleep(CONF.dcmigrate.build_interval)
        self.fail("redirect %s never ran" % redirect_id)

    @decorators.attr(type="multinode")
    @decorators.idempotent_id("6c1d0a55-3f3e-4a8e-a3d2-8c7b0c1e2b04")
    def test_abort_during_redirect(self):
        if not CONF.dcmigrate_feature_enabled.abort:
            raise self.skipException("abort during a redirect disabled")
        server, hosts, migration, before = self._start()
        running_since = time.monotonic()
        record = self.redirects.create_redirect(
            server["id"], host=hosts[2])["redirect"]
        self.abort_migration(server["id"], migration["id"])
        final = self.wait_redirect(server["id"], record["id"],
                                   states=("failed", "rolled-back",
                                           "completed"))
        self.wait_active(server["id"])
        self.assertEqual(hosts[0], self.get_host_for_server(server["id"]),
                         final)
        self.assert_only_allocation_on(server["id"], hosts[0])
        # The source's console log cannot show it: on shared instance
        # storage the first destination's virtlogd unlinked console.log
        # when its QEMU started (Nova's append='off'), and the source's
        # virtlogd goes on writing to the unlinked file until the guest
        # moves or reboots.  So move it once more, plainly: a stopped
        # guest arrives stopped (its uptime does not rise, the clock
        # stands still while paused), a dead one does not arrive.
        self.admin_servers.live_migrate_server(
            server["id"], host=hosts[1], block_migration="auto")
        self.wait_active(server["id"])
        self.assertEqual(hosts[1], self.get_host_for_server(server["id"]))
        self.assert_guest_alive(server["id"], before, running_since)

    @decorators.attr(type="multinode")
    @decorators.idempotent_id("6c1d0a55-3f3e-4a8e-a3d2-8c7b0c1e2b05")
    def test_automatic_redirect_when_destination_disabled(self):
        if not CONF.dcmigrate_feature_enabled.auto_redirect:
            raise self.skipException("automatic redirects are not enabled")
        server, hosts, migration, before = self._start()
        services = self.os_admin.services_client
        svc = [s for s in services.list_services(
            binary="nova-compute")["services"] if s["host"] == hosts[1]][0]
        services.update_service(svc["id"], status="disabled",
                                disabled_reason="tempest dcmigrate")
        self.addCleanup(services.update_service, svc["id"],
                        status="enabled")
        # The redirect API learns of a trigger's redirect from the source
        # compute while the migration runs (it lists what the source
        # knows); after that only what it has seen is listed.
        record = self._wait_trigger_record(server["id"])
        self.assertEqual("trigger:destination_disabled",
                         record["requested_by"], record)
        self.assertEqual(hosts[1], record["old_destination"], record)
        final = self.wait_redirect(server["id"], record["id"])
        self.assertEqual(hosts[2], final["new_destination"], final)
        self._check_moved(server, migration, hosts[2], hosts[1], before,
                          record["id"])

    def _wait_trigger_record(self, server_id):
        deadline = time.monotonic() + CONF.dcmigrate.build_timeout
        while time.monotonic() < deadline:
            for record in self.redirects.list_redirects(
                    server_id)["redirects"]:
                if record["requested_by"].startswith("trigger:"):
                    return record
            if not self.in_progress_migrations(server_id):
                self.fail("the migration of %s ended without an automatic "
                          "redirect" % server_id)
            time.sleep(CONF.dcmigrate.build_interval)
        self.fail("no automatic redirect of %s" % server_id)
