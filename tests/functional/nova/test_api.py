"""The dcmigrate-api service against Nova's in-process harness.

The API app is the real WSGI stack (keystonemiddleware auth_token,
oslo.middleware, Flask, oslo.policy defaults, the sqlite record store),
called over HTTP with ``requests`` through wsgi-intercept, as any client
would. Its novaclient calls reach the harness's real nova-api (also
through wsgi-intercept) and its RPC calls reach the source nova-compute's
``dcmigrate_compute`` endpoint over Nova's own (fake) message bus.

What is faked, because it cannot run here:

* Keystone: tokens are validated by keystonemiddleware's
  ``AuthTokenFixture`` (its ``fetch_token`` answers from the tokens the
  test adds). Nova's harness has no token validation of its own
  (``OSAPIFixture`` stubs it out and reads X-Auth-User, X-Auth-Project-Id
  and X-Roles), so the Nova endpoint the API is pointed at
  (``[nova] endpoint_override``) is the same nova-api app behind
  :class:`_NovaKeystoneStandIn`, which maps each token to those headers
  as keystonemiddleware would, and records the service token it got.
* libvirt's migration job: the stub of ``test_redirect.RedirectTestBase``.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import fixtures
from keystonemiddleware import fixture as ksm_fixture
from nova.compute import manager as nova_manager
from nova import rpc as nova_rpc
import requests
from wsgi_intercept import interceptor

from nova_dcmigrate.api import app as api_app
from nova_dcmigrate.compute import events
from tests.functional.nova import test_redirect

API = "http://dcmigrate-api.test:8790"
NOVA = "http://nova-for-dcmigrate.test:80"
SERVICE_TOKEN = "dcmigrate-service-token"
WAIT_S = test_redirect.WAIT_S


class _NovaKeystoneStandIn:
    """Plays keystonemiddleware in front of the harness's nova-api."""

    def __init__(self, app: Any, tokens: ksm_fixture.AuthTokenFixture
                 ) -> None:
        self.app = app
        self.tokens = tokens
        self.service_tokens: list[str | None] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        token = environ.get("HTTP_X_AUTH_TOKEN", "")
        data = self.tokens.fetch_token(token)
        environ["HTTP_X_AUTH_USER"] = data.user_id
        environ["HTTP_X_AUTH_PROJECT_ID"] = data.project_id
        environ["HTTP_X_ROLES"] = ",".join(data.role_names)
        self.service_tokens.append(environ.get("HTTP_X_SERVICE_TOKEN"))
        return self.app(environ, start_response)


class ApiTest(test_redirect.RedirectTestBase):
    """Redirects requested through dcmigrate-api."""

    def setUp(self) -> None:
        super().setUp()
        self.tokens = self.useFixture(ksm_fixture.AuthTokenFixture())
        project = self.api.project_id
        for name, user, roles in (
                ("admin", "admin", ["admin", "member", "reader"]),
                ("member", "fake", ["member", "reader"]),
                ("reader", "reader", ["reader"])):
            self.tokens.add_token_data(
                token_id="%s-token" % name, user_id=user,
                project_id=project, role_list=roles)

        nova_app = self.api_fixture.app()
        self.nova = _NovaKeystoneStandIn(nova_app, self.tokens)
        self._intercept(lambda: self.nova, NOVA)

        state = self.useFixture(fixtures.TempDir()).path
        conf_file = state + "/api.conf"
        with open(conf_file, "w") as f:
            f.write(_CONF % {"nova": NOVA, "token": SERVICE_TOKEN,
                             "state": state})
        conf = api_app.new_conf(default_config_files=[conf_file])
        # The API process's own transport would be a separate fake bus;
        # Nova's is the one the computes listen on.
        self.api_wsgi = api_app.create_app(conf,
                                           transport=nova_rpc.TRANSPORT)
        self._intercept(lambda: self.api_wsgi, API)
        self._hold_dest2()

    def _hold_dest2(self) -> None:
        # With self.hold set, the new host dest2 waits in
        # pre_live_migration: the redirect stays "preparing".
        self.hold = False
        self.entered = threading.Event()
        self.proceed = threading.Event()
        self.addCleanup(self.proceed.set)
        stock = nova_manager.ComputeManager.pre_live_migration
        test = self

        def pre_live_migration(mgr: Any, *args: Any, **kwargs: Any) -> Any:
            if test.hold and mgr.host == "dest2":
                test.entered.set()
                test.proceed.wait(WAIT_S)
            return stock(mgr, *args, **kwargs)

        self.useFixture(fixtures.MonkeyPatch(
            "nova.compute.manager.ComputeManager.pre_live_migration",
            pre_live_migration))

    def _intercept(self, app: Any, url: str) -> None:
        intercept = interceptor.RequestsInterceptor(app, url=url + "/")
        intercept.install_intercept()
        self.addCleanup(intercept.uninstall_intercept)

    # -- helpers ------------------------------------------------------------

    def _call(self, method: str, path: str, token: str = "admin-token",
              body: Any = None) -> requests.Response:
        return requests.request(
            method, API + path, json=body, timeout=WAIT_S,
            headers={"X-Auth-Token": token})

    def _url(self, redirect_id: str | None = None) -> str:
        url = "/v1/servers/%s/redirects" % self.server["id"]
        return url if redirect_id is None else "%s/%s" % (url, redirect_id)

    def _wait_record(self, redirect_id: str, *states: str
                     ) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT_S
        while True:
            resp = self._call("GET", self._url(redirect_id))
            self.assertEqual(200, resp.status_code, resp.text)
            record = resp.json()["redirect"]
            if record["state"] in states:
                return dict(record)
            if time.monotonic() > deadline:
                self.fail("redirect %s, expected %s" % (record, states))
            time.sleep(0.2)

    def _action(self, record: dict[str, Any]) -> dict[str, Any]:
        """The redirect's Nova instance action, once its event finished
        (the source writes it off its monitor thread)."""
        rid = record["request_id"]
        self.assertEqual("req-%s" % record["id"], rid)
        deadline = time.monotonic() + WAIT_S
        while True:
            actions = {a["request_id"]: a for a in
                       self.admin_api.get_instance_actions(
                           self.server["id"])}
            if rid in actions:
                self.assertEqual(events.ACTION, actions[rid]["action"])
                action = dict(self.admin_api.get_instance_action_details(
                    self.server["id"], rid))
                if all(e["result"] for e in action["events"]):
                    return action
            if time.monotonic() > deadline:
                self.fail("instance action %s never finished" % rid)
            time.sleep(0.2)

    def _redirect_via_api(self, body: dict[str, Any]) -> dict[str, Any]:
        resp = self._call("POST", self._url(), body=body)
        self.assertEqual(202, resp.status_code, resp.text)
        record = resp.json()["redirect"]
        self.assertEqual(API + self._url(record["id"]),
                         resp.headers["Location"])
        return dict(record)

    # -- tests --------------------------------------------------------------

    def test_redirect_to_named_host(self) -> None:
        self._boot()
        migration = self._start_migration("dest1")
        record = self._redirect_via_api({"host": "dest2",
                                         "reason": "drain dest1"})
        self.assertEqual(
            (self.server["id"], migration["uuid"], "src", "dest1", "dest2",
             "user:admin", "drain dest1"),
            (record["server_id"], record["migration_id"], record["source"],
             record["old_destination"], record["new_destination"],
             record["requested_by"], record["reason"]))
        self.assertIn(record["state"], ("requested", "preparing"))

        attempt = self._wait_attempt(2)
        self.assertEqual("dest2", attempt.host)
        running = self._wait_record(record["id"], "running")
        # Direct transport on fakelibvirt: nothing relayed or deduplicated;
        # byte counts are whatever Nova's monitor saved (or null).
        self.assertEqual(({}, 0), (running["progress"]["bytes_relayed"],
                                   running["progress"]["pages_deduplicated"]))
        self._assert_running_to("dest2", ("dest1",))

        self._finish(attempt, "dest2")
        done = self._wait_record(record["id"], "completed")
        self.assertIsNotNone(done["finished_at"])
        self.assertIsNone(done["error"])
        listed = self._call("GET", self._url()).json()["redirects"]
        self.assertEqual([record["id"]], [r["id"] for r in listed])

        action = self._action(record)
        self.assertEqual("admin", action["user_id"])
        self.assertEqual(
            [(events.EVENT, "Success", "src")],
            [(e["event"], e["result"], e["host"])
             for e in action["events"]])
        # Nova was asked with the caller's token plus the service token.
        self.assertIn(SERVICE_TOKEN, self.nova.service_tokens)

    def test_redirect_with_repick(self) -> None:
        self._boot(volume=False)
        self._start_migration("dest1")
        record = self._redirect_via_api({})
        self.assertIsNone(record["new_destination"])
        attempt = self._wait_attempt(2)
        running = self._wait_record(record["id"], "running")
        self.assertIn(running["new_destination"], ("dest2", "dest3"))
        self.assertEqual(attempt.host, running["new_destination"])
        self._finish(attempt, attempt.host)
        self._wait_record(record["id"], "completed")
        self.assertEqual("Success", self._action(record)["events"][0][
            "result"])

    def test_refusals(self) -> None:
        self._boot(volume=False)
        # Not migrating: 404, and nothing reaches the compute.
        resp = self._call("POST", self._url(), body={"host": "dest2"})
        self.assertEqual(404, resp.status_code, resp.text)
        self.assertIn("no live migration in progress",
                      resp.json()["error"]["message"])
        resp = self._call("POST", "/v1/servers/%s/redirects"
                          % "00000000-0000-4000-8000-000000000000",
                          body={})
        self.assertEqual(404, resp.status_code, resp.text)

        self._start_migration("dest1")
        # Non-admins may not redirect (our policy, before Nova is asked
        # for the migration).
        for token in ("member-token", "reader-token"):
            resp = self._call("POST", self._url(), token=token, body={})
            self.assertEqual(403, resp.status_code, resp.text)
            self.assertEqual("Forbidden", resp.json()["error"]["title"])
        resp = self._call("POST", self._url(), token="bogus", body={})
        self.assertEqual(401, resp.status_code, resp.text)
        # Hosts the source refuses: 400 with its reason.
        for host, reason in (("nowhere", "no nova-compute service"),
                             ("src", "the source"),
                             ("dest1", "the current destination")):
            resp = self._call("POST", self._url(), body={"host": host})
            self.assertEqual(400, resp.status_code, resp.text)
            self.assertIn(reason, resp.json()["error"]["message"])

        self.hold = True
        record = self._redirect_via_api({"host": "dest2"})
        self.assertTrue(self.entered.wait(WAIT_S))
        self.assertEqual("preparing",
                         self._wait_record(record["id"], "preparing")[
                             "state"])
        # Another request while that one is being prepared: 409.
        resp = self._call("POST", self._url(), body={"host": "dest3"})
        self.assertEqual(409, resp.status_code, resp.text)
        self.assertIn("already being redirected to dest2",
                      resp.json()["error"]["message"])
        # A project reader reads the records (from the API's store: Nova
        # lists migrations to admins only).
        resp = self._call("GET", self._url(record["id"]),
                          token="reader-token")
        self.assertEqual(200, resp.status_code, resp.text)
        self.assertEqual(record["id"], resp.json()["redirect"]["id"])

        # Nova's own abort while the redirect is prepared: the migration
        # rolls back to the source, the redirect with it.
        self.api.api_delete("/servers/%s/migrations/%s" % (
            self.server["id"], self.migration["id"]))
        self.proceed.set()
        self._wait_migration("cancelled")
        done = self._wait_record(record["id"], "failed", "rolled-back")
        self.assertIsNotNone(done["error"])
        event = self._action(record)["events"][0]
        self.assertEqual((events.EVENT, "Error"),
                         (event["event"], event["result"]))


_CONF = """
[DEFAULT]
state_path = %(state)s

[api]
auth_strategy = keystone

[keystone_authtoken]
www_authenticate_uri = http://keystone.test/identity

[nova]
endpoint_override = %(nova)s/v2.1

[service_user]
send_service_user_token = true
auth_type = admin_token
endpoint = %(nova)s
token = %(token)s
"""
