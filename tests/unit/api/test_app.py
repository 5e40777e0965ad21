"""The redirect REST API: every status code, policy defaults, middleware.

Flask's test client on the full WSGI stack (oslo.middleware,
keystonemiddleware or noauth, Flask, oslo.policy defaults, jsonschema,
sqlite store); Nova and the source compute are the fakes of
:mod:`tests.unit.api.fakes` (unit level: they cannot run without Nova).
"""

from __future__ import annotations

import json

from keystonemiddleware import fixture as ksm_fixture
import oslo_messaging as messaging
import pytest
from werkzeug import test as wz_test

from nova_dcmigrate.api import app as api_app
from nova_dcmigrate.api import service as redirect_service
from nova_dcmigrate.api import store as record_store
from nova_dcmigrate.compute import exception as redirect_exception
from nova_dcmigrate import policies
from nova_dcmigrate.scheduler import exception as scheduler_exception
from tests.unit.api import fakes
from tests.unit.api.fakes import MIGRATION, OTHER_PROJECT, PROJECT, SERVER

ROLES = {"admin": "admin,member,reader", "member": "member,reader",
         "reader": "reader", "none": ""}
URL = "/v1/servers/%s/redirects" % SERVER


def _conf(tmp_path, auth="noauth"):
    path = tmp_path / "dcmigrate-api.conf"
    # Read by keystonemiddleware when it registers its options.
    path.write_text("[keystone_authtoken]\n"
                    "www_authenticate_uri = http://keystone.test/identity\n")
    conf = api_app.new_conf(default_config_files=[str(path)])
    conf.set_override("auth_strategy", auth, "api")
    conf.set_override("allow_noauth", True, "api")
    conf.set_override("connection", "sqlite:///%s" % (tmp_path / "r.db"),
                      "database")
    return conf


class Api:
    def __init__(self, tmp_path, auth="noauth"):
        self.conf = _conf(tmp_path, auth)
        self.world = fakes.World()
        self.compute = fakes.FakeCompute()
        self.store = record_store.RecordStore(
            record_store.connection_url(self.conf))
        self.service = redirect_service.RedirectService(
            fakes.FakeLookup(self.conf, self.world), self.compute,
            self.store, policies.make_enforcer(self.conf))
        self.client = wz_test.Client(
            api_app.create_app(self.conf, service=self.service))

    def request(self, method, url=URL, role="admin", project=PROJECT,
                body=None, raw=None, headers=None):
        h = {"X-User-Id": "user-%s" % role, "X-Project-Id": project,
             "X-Roles": ROLES[role],
             "X-Auth-Token": "%s:%s" % (project, role)}
        h.update(headers or {})
        data = raw if raw is not None else (
            None if body is None else json.dumps(body))
        resp = self.client.open(url, method=method, headers=h, data=data,
                                content_type="application/json")
        return resp.status_code, json.loads(resp.data or b"null"), resp


@pytest.fixture
def api(tmp_path):
    return Api(tmp_path)


def _error(body, code):
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert body["error"]["title"]
    assert body["error"]["message"]
    return body["error"]["message"]


# -- success --------------------------------------------------------------


def test_create_list_show(api):
    code, body, resp = api.request("POST", body={"host": "dest2",
                                                 "reason": "rack 4 down"})
    assert code == 202
    rec = body["redirect"]
    assert (rec["server_id"], rec["migration_id"], rec["state"],
            rec["new_destination"], rec["requested_by"], rec["reason"]) == (
        SERVER, MIGRATION, "requested", "dest2", "user:user-admin",
        "rack 4 down")
    assert resp.headers["Location"].endswith("%s/%s" % (URL, rec["id"]))
    assert ("redirect", ("src", SERVER, MIGRATION, "dest2", "rack 4 down",
                         "user:user-admin")) in api.compute.calls

    code, body2, _ = api.request("POST", body={})
    assert code == 202 and body2["redirect"]["new_destination"] is None
    code, body, _ = api.request("GET")
    assert code == 200
    assert [r["id"] for r in body["redirects"]] == [
        body2["redirect"]["id"], rec["id"]]
    code, body, _ = api.request("GET", url="%s/%s" % (URL, rec["id"]))
    assert code == 200 and body["redirect"]["id"] == rec["id"]


def test_records_outlive_the_source(api):
    """A source that forgot (restart) or does not answer: the stored
    records are listed."""
    _, created, _ = api.request("POST", body={"host": "dest2"})
    api.world.migrations[SERVER] = []
    api.compute.records.clear()
    code, body, _ = api.request("GET")
    assert code == 200
    assert [r["id"] for r in body["redirects"]] == [created["redirect"]["id"]]
    api.compute.error = messaging.MessagingTimeout("no answer")
    code, body, _ = api.request("GET", role="reader")
    assert code == 200 and len(body["redirects"]) == 1


def test_version_document_and_healthcheck(api):
    resp = api.client.get("/")
    assert resp.status_code == 200
    assert resp.json["versions"][0]["id"] == "v1.0"
    assert api.client.get("/healthcheck").status_code == 200


# -- 400 ------------------------------------------------------------------


@pytest.mark.parametrize("raw,fragment", [
    ("{not json", "not valid JSON"),
    (json.dumps({"host": 3}), "3 is not of type"),
    (json.dumps({"host": ""}), "should be non-empty"),
    (json.dumps({"host": "a b"}), "does not match"),
    (json.dumps({"hots": "dest2"}), "Additional properties"),
    (json.dumps({"reason": "x" * 300}), "is too long"),
    (json.dumps([1]), "is not of type 'object'"),
])
def test_bad_body(api, raw, fragment):
    code, body, _ = api.request("POST", raw=raw)
    assert code == 400
    assert fragment in _error(body, 400)
    assert not [c for c in api.compute.calls if c[0] == "redirect"]


@pytest.mark.parametrize("host,what", [("src", "the source"),
                                       ("dest1", "the current destination")])
def test_host_is_source_or_current_destination(api, host, what):
    code, body, _ = api.request("POST", body={"host": host})
    assert code == 400 and what in _error(body, 400)


def test_unknown_host(api):
    api.compute.error = redirect_exception.InvalidRedirectTarget(
        migration=MIGRATION, host="nowhere",
        reason="no nova-compute service on that host")
    code, body, _ = api.request("POST", body={"host": "nowhere"})
    assert code == 400
    assert "no nova-compute service" in _error(body, 400)


# -- 401 / 403 ------------------------------------------------------------


def test_noauth_without_user_is_401(api):
    resp = api.client.post(URL, json={})
    assert resp.status_code == 401
    _error(resp.json, 401)


@pytest.mark.parametrize("role", ["member", "reader", "none"])
def test_create_needs_admin(api, role):
    code, body, _ = api.request("POST", role=role, body={})
    assert code == 403
    assert "dcmigrate:redirect:create" in _error(body, 403)
    assert not api.compute.calls


@pytest.mark.parametrize("role,project,expected", [
    ("admin", PROJECT, 200), ("admin", OTHER_PROJECT, 200),
    ("member", PROJECT, 200), ("reader", PROJECT, 200),
    ("none", PROJECT, 403),
    ("reader", OTHER_PROJECT, 403), ("member", OTHER_PROJECT, 403),
])
def test_read_policy_defaults(api, role, project, expected):
    # A Nova that shows the server to everyone: our policy decides.
    api.world.scoped = False
    _, created, _ = api.request("POST", body={})
    for url in (URL, "%s/%s" % (URL, created["redirect"]["id"])):
        code, body, _ = api.request("GET", url=url, role=role,
                                    project=project)
        assert code == expected, url
        if expected == 403:
            assert "dcmigrate:redirect:" in _error(body, 403)


def test_nova_scoping_applies_first(api):
    code, body, _ = api.request("GET", role="reader", project=OTHER_PROJECT)
    assert code == 404 and SERVER in _error(body, 404)


@pytest.mark.parametrize("role,project,create,read", [
    ("admin", PROJECT, True, True), ("member", PROJECT, False, True),
    ("reader", PROJECT, False, True), ("reader", OTHER_PROJECT, False, False),
    ("member", OTHER_PROJECT, False, False),
])
def test_policy_rule_defaults(tmp_path, role, project, create, read):
    from oslo_context import context as oslo_context
    enforcer = policies.make_enforcer(_conf(tmp_path))
    ctxt = oslo_context.RequestContext(
        user_id="u", project_id=project, roles=ROLES[role].split(","))
    target = {"project_id": PROJECT}
    assert enforcer.authorize("dcmigrate:redirect:create", target,
                              ctxt) is create
    for rule in ("dcmigrate:redirect:list", "dcmigrate:redirect:show"):
        assert enforcer.authorize(rule, target, ctxt) is read


# -- 404 ------------------------------------------------------------------


def test_no_such_server(api):
    code, body, _ = api.request(
        "POST", url="/v1/servers/nope/redirects", body={})
    assert code == 404 and "nope" in _error(body, 404)
    code, body, _ = api.request("GET", url="/v1/servers/nope/redirects")
    assert code == 404


def test_server_not_migrating(api):
    code, body, _ = api.request(
        "POST", url="/v1/servers/%s/redirects" % fakes.OTHER_SERVER,
        body={})
    assert code == 404
    assert "no live migration in progress" in _error(body, 404)


def test_no_such_redirect(api):
    code, body, _ = api.request("GET", url=URL + "/nope")
    assert code == 404 and "no redirect nope" in _error(body, 404)


def test_source_does_not_run_it(api):
    api.compute.error = redirect_exception.UnknownLiveMigration(
        instance=SERVER, host="src")
    code, body, _ = api.request("POST", body={})
    assert code == 404


def test_unknown_url_and_method(api):
    code, body, _ = api.request("GET", url="/v2/anything")
    assert code == 404
    _error(body, 404)
    code, body, _ = api.request("DELETE")
    assert code == 405
    _error(body, 405)


# -- 409 ------------------------------------------------------------------


@pytest.mark.parametrize("err", [
    redirect_exception.PostCopyMigration(migration=MIGRATION,
                                         destination="dest1"),
    redirect_exception.SwitchingOver(migration=MIGRATION,
                                     destination="dest1",
                                     status="post-migrating"),
    redirect_exception.MigrationNotRunning(migration=MIGRATION,
                                           status="preparing"),
    redirect_exception.RedirectInProgress(migration=MIGRATION,
                                          target="dest2",
                                          state="preparing"),
    redirect_exception.UnknownMigration(migration=MIGRATION,
                                        instance=SERVER, running="other"),
    scheduler_exception.NoValidRedirectTarget(
        migration=MIGRATION, instance=SERVER, reason="none",
        ignored_hosts="src", trait="T"),
    messaging.RemoteError("RedirectInProgress", "busy with dest2"),
])
def test_not_redirectable_now(api, err):
    api.compute.error = err
    code, body, _ = api.request("POST", body={})
    assert code == 409
    message = _error(body, 409)
    assert message == (str(err) if not isinstance(err, messaging.RemoteError)
                       else "busy with dest2")


def test_unsupported_flags_refusal_is_409(api):
    # Nova's own pre-check refused the flags; the migration never ran,
    # Nova lists it as not running (queued/preparing).
    api.world.migrations[SERVER][0].status = "preparing"
    api.compute.error = redirect_exception.MigrationNotRunning(
        migration=MIGRATION, status="preparing")
    code, _, _ = api.request("POST", body={})
    assert code == 409


# -- 503 ------------------------------------------------------------------


def test_source_compute_unreachable(api):
    api.compute.error = messaging.MessagingTimeout("timed out")
    code, body, _ = api.request("POST", body={})
    assert code == 503
    assert "source compute src" in _error(body, 503)
    code, body, _ = api.request("GET")
    assert code == 503


def test_source_compute_fails_unexpectedly(api):
    api.compute.error = messaging.RemoteError("KeyError", "'x'")
    code, body, _ = api.request("POST", body={})
    assert code == 503 and "KeyError" in _error(body, 503)


def test_nova_unreachable(api):
    api.world.nova_down = True
    code, body, _ = api.request("POST", body={})
    assert code == 503 and "Nova" in _error(body, 503)


def test_unexpected_error_is_never_a_500(api, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("secret internals")
    monkeypatch.setattr(api.store, "save", boom)
    code, body, resp = api.request("POST", body={})
    assert code == 503
    message = _error(body, 503)
    assert "RuntimeError" in message and "secret internals" not in message
    assert resp.headers["x-openstack-request-id"] in message
    assert resp.headers["Content-Type"] == "application/json"


def test_oversized_body_is_a_json_error(api):
    code, body, _ = api.request("POST", raw="x" * (1024 * 1024 + 1))
    assert code == 413
    _error(body, 413)


# -- keystone mode --------------------------------------------------------


def test_keystone_tokens(tmp_path):
    api = Api(tmp_path, auth="keystone")
    with ksm_fixture.AuthTokenFixture() as auth:
        auth.add_token_data(token_id="%s:admin" % PROJECT, user_id="adm",
                            project_id=PROJECT,
                            role_list=["admin", "member", "reader"])
        auth.add_token_data(token_id="%s:reader" % PROJECT, user_id="rdr",
                            project_id=PROJECT, role_list=["reader"])
        resp = api.client.post(URL, json={})
        assert resp.status_code == 401
        _error(resp.json, 401)
        resp = api.client.post(URL, json={},
                               headers={"X-Auth-Token": "bogus"})
        assert resp.status_code == 401
        resp = api.client.post(URL, json={"reason": "r"}, headers={
            "X-Auth-Token": "%s:reader" % PROJECT})
        assert resp.status_code == 403
        # Identity headers of the request are not trusted.
        resp = api.client.post(URL, json={"reason": "r"}, headers={
            "X-Auth-Token": "%s:admin" % PROJECT, "X-User-Id": "mallory"})
        assert resp.status_code == 202
        assert resp.json["redirect"]["requested_by"] == "user:adm"


def test_noauth_is_refused_unless_allowed(tmp_path):
    conf = _conf(tmp_path)
    conf.set_override("allow_noauth", False, "api")
    with pytest.raises(api_app.NoauthRefused):
        api_app.create_app(conf, service=object())
