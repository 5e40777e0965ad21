"""Redirect API: refusals, each with its precise status code."""

from __future__ import annotations

from oslo_utils import uuidutils
from tempest import config
from tempest.lib import decorators
from tempest.lib import exceptions as lib_exc

from .. import base

CONF = config.CONF


class RedirectApiTest(base.DcmigrateBaseTest):

    @classmethod
    def skip_checks(cls):
        super().skip_checks()
        if not CONF.dcmigrate_feature_enabled.api:
            raise cls.skipException("the redirect API is not deployed")

    @classmethod
    def resource_setup(cls):
        super().resource_setup()
        # An ACTIVE server that is not migrating (idle image, small).
        cls.server = cls.create_test_server(wait_until="ACTIVE")

    @decorators.idempotent_id("0b0f5b9e-8a51-4d8f-9b53-2f1f4b7c1a01")
    def test_create_forbidden_for_member(self):
        self.assert_http(lib_exc.Forbidden,
                         self.member_redirects.create_redirect,
                         self.server["id"])

    @decorators.idempotent_id("0b0f5b9e-8a51-4d8f-9b53-2f1f4b7c1a02")
    def test_unknown_server(self):
        self.assert_http(lib_exc.NotFound, self.redirects.create_redirect,
                         uuidutils.generate_uuid())

    @decorators.idempotent_id("0b0f5b9e-8a51-4d8f-9b53-2f1f4b7c1a03")
    def test_server_not_migrating(self):
        self.assert_http(lib_exc.NotFound, self.redirects.create_redirect,
                         self.server["id"])

    @decorators.idempotent_id("0b0f5b9e-8a51-4d8f-9b53-2f1f4b7c1a04")
    def test_unknown_redirect(self):
        self.assert_http(lib_exc.NotFound, self.redirects.show_redirect,
                         self.server["id"], uuidutils.generate_uuid())

    @decorators.idempotent_id("0b0f5b9e-8a51-4d8f-9b53-2f1f4b7c1a05")
    def test_list_empty(self):
        body = self.redirects.list_redirects(self.server["id"])
        self.assertEqual([], body["redirects"])


class RedirectApiMigratingTest(base.DcmigrateBaseTest):
    """Refusals that need a running live migration (one per test)."""

    @classmethod
    def skip_checks(cls):
        super().skip_checks()
        if not CONF.dcmigrate_feature_enabled.api:
            raise cls.skipException("the redirect API is not deployed")

    def _migrating(self):
        src, dst, other = self.three_hosts()[:3]
        server = self.boot_on(src)
        self.live_migrate(server["id"], dst)
        self.addCleanup(self.wait_active, server["id"])
        return server, src, dst, other

    @decorators.idempotent_id("0b0f5b9e-8a51-4d8f-9b53-2f1f4b7c1a06")
    def test_bad_hosts(self):
        server, src, dst, _ = self._migrating()
        for host in ("no-such-host-%s" % uuidutils.generate_uuid()[:8],
                     src, dst):
            self.assert_http(lib_exc.BadRequest,
                             self.redirects.create_redirect, server["id"],
                             host=host)
        # Nothing changed: the migration carries on to its destination.
        self.wait_active(server["id"])
        self.assertEqual(dst, self.get_host_for_server(server["id"]))

    @decorators.idempotent_id("0b0f5b9e-8a51-4d8f-9b53-2f1f4b7c1a07")
    def test_conflict_while_another_redirect_prepares(self):
        """409 while a redirect is being prepared.

        The API answers a redirect once the source queued it; preparing
        the new host (Nova's pre-live-migration there, its QEMU and agent)
        takes seconds under TCG, so a second request sent right away
        always finds the first one in progress.  The other 409 of the
        table, during the switchover, cannot be provoked from outside
        (doc/source/lab-cloud.rst, "Conflicts the tests provoke").
        """
        server, _, dst, other = self._migrating()
        first = self.redirects.create_redirect(
            server["id"], host=other, reason="tempest")["redirect"]
        err = self.assert_http(lib_exc.Conflict,
                               self.redirects.create_redirect, server["id"])
        body = err.resp_body
        self.assertEqual(409, body["code"], body)
        self.assertIn("already being redirected to %s" % other,
                      body["message"])
        # The refused request changed nothing: the first one either
        # completes or, when the migration reached its destination while
        # the new host was being prepared, is cancelled (the guest stays
        # where the migration went).
        final = self.wait_redirect(server["id"], first["id"],
                                   states=("completed", "failed"))
        self.assertEqual(dst, final["old_destination"], final)
        self.wait_active(server["id"])
        if final["state"] == "failed":
            self.assertEqual("RedirectCancelled", final["error"]["code"],
                             final)
            self.assertEqual(dst, self.get_host_for_server(server["id"]))
        else:
            self.assertEqual(other, self.get_host_for_server(server["id"]))
        listed = self.redirects.list_redirects(server["id"])["redirects"]
        self.assertEqual([first["id"]], [r["id"] for r in listed])
