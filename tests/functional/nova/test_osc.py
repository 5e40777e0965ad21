"""The ``openstack`` command against the real dcmigrate-api on Nova's harness.

The real ``openstack`` entry point runs as a subprocess (OSC loads our
plugin from the installed wheel's entry points) and talks HTTP to the
dcmigrate-api app (``api_app.create_app``: Flask, oslo.middleware, the
policy defaults, the sqlite record store), served from a thread of this
test on 127.0.0.1:<free port>.  The API runs in its lab noauth mode
(``[api] auth_strategy = noauth`` + ``allow_noauth``), so the CLI runs with
``--os-auth-type none`` and the identity headers the API trusts.  The
API's novaclient calls reach the harness's real nova-api through
wsgi-intercept, its RPC calls reach the source nova-compute's
``dcmigrate_compute`` endpoint over Nova's own (fake) message bus.

What is faked, because it cannot run here: libvirt's migration job (the
stub of ``test_redirect.RedirectTestBase``), and Keystone in front of
nova-api: the token the CLI hands the API (``--os-dcmigrate-noauth-token``,
which the API forwards to Nova in noauth mode) is mapped to the
X-Auth-User / X-Auth-Project-Id / X-Roles headers the harness's nova-api
reads, by :class:`_NovaIdentity`.
"""

from __future__ import annotations

import json
import os
import socketserver
import subprocess
import sys
import threading
from typing import Any
from wsgiref import simple_server

import fixtures
from nova import rpc as nova_rpc
from wsgi_intercept import interceptor

from nova_dcmigrate.api import app as api_app
from tests.functional.nova import test_redirect

NOVA = "http://nova-for-osc.test:80"
OPENSTACK = os.path.join(os.path.dirname(sys.executable), "openstack")
ADMIN_TOKEN = "osc-admin-token"
WAIT_S = test_redirect.WAIT_S


class _NovaIdentity:
    """Keystone's part in front of the harness's nova-api: token ->
    the identity headers nova-api's test pipeline reads."""

    def __init__(self, app: Any, tokens: dict[str, tuple[str, str, str]]
                 ) -> None:
        self.app = app
        self.tokens = tokens

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        user, project, roles = self.tokens.get(
            environ.get("HTTP_X_AUTH_TOKEN", ""), ("anonymous", "", ""))
        environ["HTTP_X_AUTH_USER"] = user
        environ["HTTP_X_AUTH_PROJECT_ID"] = project
        environ["HTTP_X_ROLES"] = roles
        return self.app(environ, start_response)


class _ThreadingWSGIServer(socketserver.ThreadingMixIn,
                           simple_server.WSGIServer):
    daemon_threads = True


class _QuietHandler(simple_server.WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class OSCTest(test_redirect.RedirectTestBase):
    """``openstack server migration redirect`` and ``server migrate
    --redirect`` end to end."""

    def setUp(self) -> None:
        super().setUp()
        project = self.api.project_id
        nova_app = self.api_fixture.app()
        identity = _NovaIdentity(nova_app, {
            ADMIN_TOKEN: ("admin", project, "admin,member,reader")})
        intercept = interceptor.RequestsInterceptor(
            lambda: identity, url=NOVA + "/")
        intercept.install_intercept()
        self.addCleanup(intercept.uninstall_intercept)

        state = self.useFixture(fixtures.TempDir()).path
        conf_file = os.path.join(state, "api.conf")
        with open(conf_file, "w") as f:
            f.write(_CONF % {"nova": NOVA, "state": state})
        conf = api_app.new_conf(default_config_files=[conf_file])
        wsgi = api_app.create_app(conf, transport=nova_rpc.TRANSPORT)
        httpd = simple_server.make_server(
            "127.0.0.1", 0, wsgi, server_class=_ThreadingWSGIServer,
            handler_class=_QuietHandler)
        self.endpoint = "http://127.0.0.1:%d" % httpd.server_address[1]
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        self.addCleanup(thread.join, 5)
        self.addCleanup(httpd.server_close)
        self.addCleanup(httpd.shutdown)

    def openstack(self, *argv: str, roles: str = "admin,member,reader",
                  token: str = ADMIN_TOKEN) -> subprocess.CompletedProcess:
        """Run ``openstack`` (noauth) against the API; output captured to
        $DCMIGRATE_OSC_CAPTURE too when that is set."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("OS_")}
        env["COLUMNS"] = "160"
        p = subprocess.run(
            [OPENSTACK, "--os-auth-type", "none",
             "--os-dcmigrate-endpoint", self.endpoint,
             "--os-dcmigrate-noauth-user", "admin",
             "--os-dcmigrate-noauth-project", self.api.project_id,
             "--os-dcmigrate-noauth-roles", roles,
             "--os-dcmigrate-noauth-token", token, *argv],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env, timeout=WAIT_S * 2)
        capture = os.environ.get("DCMIGRATE_OSC_CAPTURE")
        if capture:
            # doc/source/cli.rst shows output captured this way.
            with open(capture, "a") as f:
                f.write("$ openstack %s\n%s%s[rc %d]\n\n" % (
                    " ".join(argv), p.stdout, p.stderr, p.returncode))
        return p

    def _json(self, *argv: str) -> Any:
        p = self.openstack(*argv, "-f", "json")
        self.assertEqual(0, p.returncode, p.stderr)
        return json.loads(p.stdout)

    def test_redirect_named_host_list_show(self) -> None:
        self._boot(volume=False)
        migration = self._start_migration("dest1")
        server = self.server["id"]
        record = self._json("server", "migration", "redirect", server,
                            "--host", "dest2", "--reason", "drain dest1")
        self.assertEqual(
            (server, migration["uuid"], "src", "dest1", "dest2",
             "user:admin", "drain dest1"),
            (record["server_id"], record["migration_id"], record["source"],
             record["old_destination"], record["new_destination"],
             record["requested_by"], record["reason"]))
        attempt = self._wait_attempt(2)
        self.assertEqual("dest2", attempt.host)
        self._wait_state("running")
        shown = self._json("server", "migration", "redirect", "show",
                           server, record["id"])
        self.assertEqual(("running", "dest2"),
                         (shown["state"], shown["new_destination"]))
        self.assertIsNotNone(shown["progress"])
        table = self.openstack("server", "migration", "redirect", "show",
                               server, record["id"])
        self.assertEqual(0, table.returncode, table.stderr)
        rows = dict((cell.strip() for cell in line.split("|")[1:3])
                    for line in table.stdout.splitlines()
                    if line.startswith("| ") and line.count("|") == 3)
        self.assertEqual(("running", "dest2"),
                         (rows["state"], rows["new_destination"]))
        self._assert_running_to("dest2", ("dest1",), volume=False)

        self._finish(attempt, "dest2")
        self._wait_state("completed")
        listed = self._json("server", "migration", "redirect", "list",
                            server)
        self.assertEqual([(record["id"], "completed", "dest1", "dest2")],
                         [(r["ID"], r["State"], r["Old Destination"],
                           r["New Destination"]) for r in listed])
        self._assert_finished_on("dest2", ("dest1",), volume=False)

    def test_server_migrate_redirect_wait_repick(self) -> None:
        self._boot(volume=False)
        self._start_migration("dest1")

        def complete_second_attempt() -> None:
            attempt = self._wait_attempt(2)
            self._wait_state("running")
            self._complete(attempt)

        helper = threading.Thread(target=complete_second_attempt,
                                  daemon=True)
        helper.start()
        p = self.openstack("server", "migrate", "--redirect", "--wait",
                           self.server["id"])
        helper.join(WAIT_S)
        self.assertEqual(0, p.returncode, p.stderr)
        out = p.stdout.splitlines()
        self.assertEqual(2, len(out), p.stdout)
        self.assertIn(": requested, new destination (re-pick)", out[0])
        self.assertIn(": completed, new destination dest", out[1])
        # Without a terminal, --wait printed plain progress lines.
        self.assertIn(": running, new destination dest", p.stderr)
        new_host = out[1].split("new destination ")[1].split(",")[0]
        self.assertIn(new_host, ("dest2", "dest3"))
        self.assertEqual(new_host, self.attempts[1].host)
        self._wait_migration("completed")
        server = self._wait_server("ACTIVE")
        self.assertEqual(new_host, server["OS-EXT-SRV-ATTR:host"])

    def test_refusals_are_clear_errors(self) -> None:
        self._boot(volume=False)
        server = self.server["id"]
        p = self.openstack("server", "migration", "redirect", server,
                           "--host", "dest2")
        self.assertEqual(1, p.returncode)
        self.assertTrue(p.stderr.startswith("Not Found (HTTP 404): "),
                        p.stderr)
        self.assertNotIn("Traceback", p.stderr)

        self._start_migration("dest1")
        p = self.openstack("server", "migrate", "--redirect", "--host",
                           "dest2", server, roles="member,reader")
        self.assertEqual(1, p.returncode)
        self.assertTrue(p.stderr.startswith("Forbidden (HTTP 403): "),
                        p.stderr)
        p = self.openstack("server", "migration", "redirect", server,
                           "--host", "src")
        self.assertEqual(1, p.returncode)
        self.assertTrue(p.stderr.startswith("Bad Request (HTTP 400): "),
                        p.stderr)
        self.assertIn("the source", p.stderr)
        # Nothing was redirected: the migration still goes to dest1.
        self.assertEqual(1, len(self.attempts))
        self._finish(self._wait_attempt(1), "dest1")


_CONF = """
[DEFAULT]
state_path = %(state)s

[api]
auth_strategy = noauth
allow_noauth = true

[nova]
endpoint_override = %(nova)s/v2.1
"""
