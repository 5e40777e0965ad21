"""The dcmigrate-api WSGI application: Flask routes plus middleware.

Middleware, outermost first: oslo.middleware ``HTTPProxyToWSGI``,
``RequestId``, ``Healthcheck`` (``/healthcheck``, no auth),
:class:`JsonErrors` (anything a middleware below answers or raises becomes
a JSON error), ``RequestBodySizeLimiter``, then keystonemiddleware
``auth_token`` (``delay_auth_decision``: the app answers 401 itself, as
JSON) or, only with ``[api] auth_strategy = noauth`` and ``allow_noauth``,
nothing (the identity headers are trusted).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

import flask
from keystoneauth1.identity import access as access_plugin
from keystoneauth1 import token_endpoint
from keystonemiddleware import auth_token
from oslo_config import cfg
from oslo_context import context as oslo_context
from oslo_log import log as logging
from oslo_middleware import healthcheck
from oslo_middleware import http_proxy_to_wsgi
from oslo_middleware import request_id
from oslo_middleware import sizelimit
import oslo_messaging as messaging
from werkzeug import exceptions as http_exceptions

from nova_dcmigrate.api import compute_rpc
from nova_dcmigrate.api import errors
from nova_dcmigrate.api import nova as nova_api
from nova_dcmigrate.api import schemas
from nova_dcmigrate.api import service as redirect_service
from nova_dcmigrate.api import store as record_store
from nova_dcmigrate.conf import api as api_conf
from nova_dcmigrate import policies

LOG = logging.getLogger(__name__)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
JSON = "application/json"
SERVICE_KEY = "dcmigrate.service"


class NoauthRefused(Exception):
    """auth_strategy = noauth without allow_noauth = true."""


def _json(body: Any, status: int = 200,
          headers: dict[str, str] | None = None) -> flask.Response:
    return flask.Response(json.dumps(body), status=status, mimetype=JSON,
                          headers=headers)


def _error(err: errors.ApiError) -> flask.Response:
    return _json(err.body(), status=err.status)


def _caller() -> redirect_service.Caller:
    """The request's context and Nova credentials, or 401."""
    env = flask.request.environ
    conf = flask.current_app.config["DCMIGRATE_CONF"]
    ctxt = oslo_context.RequestContext.from_environ(env)
    if conf.api.auth_strategy == "noauth":
        if not ctxt.user_id:
            raise errors.Unauthorized(reason="noauth mode needs X-User-Id")
        token = flask.request.headers.get("X-Auth-Token") or "noauth"
        auth = token_endpoint.Token(conf.nova.endpoint_override, token)
        return redirect_service.Caller(ctxt, auth)
    if env.get("HTTP_X_IDENTITY_STATUS") != "Confirmed":
        raise errors.Unauthorized(reason="no valid X-Auth-Token")
    # The caller's token and catalog only: keystonemiddleware's own plugin
    # would add a service token of its own ([keystone_authtoken]
    # credentials); ours comes from [service_user] (NovaLookup).
    user = env["keystone.token_auth"].user
    return redirect_service.Caller(ctxt,
                                   access_plugin.AccessInfoPlugin(user))


def _service() -> redirect_service.RedirectService:
    return flask.current_app.config[SERVICE_KEY]  # type: ignore[no-any-return]


def _location(server_id: str, redirect_id: str) -> str:
    return "%s/v1/servers/%s/redirects/%s" % (
        flask.request.host_url.rstrip("/"), server_id, redirect_id)


def _body() -> dict[str, Any]:
    raw = flask.request.get_data(cache=False)
    try:
        body = json.loads(raw) if raw.strip() else {}
    except (ValueError, UnicodeDecodeError) as err:
        raise errors.BadRequest(
            reason="The request body is not valid JSON: %s" % err) from err
    message = schemas.validate(schemas.CREATE_REDIRECT, body)
    if message is not None:
        raise errors.BadRequest(reason=message)
    return dict(body)


def _routes(app: flask.Flask) -> None:
    @app.get("/")
    def versions() -> flask.Response:
        base = flask.request.host_url.rstrip("/")
        return _json({"versions": [{
            "id": "v1.0", "status": "CURRENT",
            "links": [{"rel": "self", "href": base + "/v1/"}]}]})

    @app.post("/v1/servers/<server_id>/redirects")
    def create(server_id: str) -> flask.Response:
        caller = _caller()
        body = _body()
        record = _service().create(caller, server_id, body.get("host"),
                                   body.get("reason"))
        return _json({"redirect": record}, status=202, headers={
            "Location": _location(server_id, record["id"])})

    @app.get("/v1/servers/<server_id>/redirects")
    def index(server_id: str) -> flask.Response:
        caller = _caller()
        return _json({"redirects": _service().list(caller, server_id)})

    @app.get("/v1/servers/<server_id>/redirects/<redirect_id>")
    def show(server_id: str, redirect_id: str) -> flask.Response:
        caller = _caller()
        return _json({"redirect": _service().show(caller, server_id,
                                                  redirect_id)})

    @app.errorhandler(errors.ApiError)
    def api_error(err: errors.ApiError) -> flask.Response:
        if err.status >= 500:
            LOG.warning("%(method)s %(path)s: %(err)s",
                        {"method": flask.request.method,
                         "path": flask.request.path, "err": err})
        return _error(err)

    @app.errorhandler(http_exceptions.HTTPException)
    def http_error(err: http_exceptions.HTTPException) -> flask.Response:
        code = err.code or 400
        cls = {404: errors.NotFound, 405: errors.MethodNotAllowed}.get(
            code, errors.BadRequest)
        api_err = cls(reason=err.description or err.name)
        api_err.status = code
        return _error(api_err)

    @app.errorhandler(Exception)
    def unexpected(err: Exception) -> flask.Response:
        rid = flask.request.environ.get(request_id.ENV_REQUEST_ID)
        LOG.exception("Unexpected error in %(method)s %(path)s",
                      {"method": flask.request.method,
                       "path": flask.request.path})
        return _error(errors.unexpected(err, rid))


class JsonErrors:
    """Turns what the middleware below raises or answers as a non-JSON
    error into the API's JSON error; never a traceback or HTML page."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any],
                 start_response: Callable[..., Any]) -> Iterable[bytes]:
        captured: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]],
                    exc_info: Any = None) -> Callable[[bytes], Any]:
            captured["status"] = status
            captured["headers"] = headers
            return lambda data: None

        try:
            body = b"".join(self.app(environ, capture))
        except Exception as err:
            LOG.exception("Unexpected error below the API")
            return self._answer(start_response, errors.unexpected(
                err, environ.get(request_id.ENV_REQUEST_ID)))
        status = captured.get("status", "503 Service Unavailable")
        headers = captured.get("headers", [])
        code = int(status.split()[0])
        ctype = dict((k.lower(), v) for k, v in headers).get(
            "content-type", "")
        if code >= 400 and not ctype.startswith(JSON):
            cls = errors.ServiceUnavailable if code >= 500 else errors.ApiError
            api_err = cls(reason=status.split(" ", 1)[-1])
            api_err.status = 503 if code >= 500 else code
            return self._answer(start_response, api_err)
        start_response(status, headers)
        return [body]

    @staticmethod
    def _answer(start_response: Callable[..., Any],
                err: errors.ApiError) -> list[bytes]:
        data = json.dumps(err.body()).encode()
        start_response("%d %s" % (err.status, err.title),
                       [("Content-Type", JSON),
                        ("Content-Length", str(len(data)))])
        return [data]


class _HealthcheckPath:
    """``/healthcheck`` goes to oslo.middleware's healthcheck app (an app
    since oslo.middleware 8, not a filter), everything else on."""

    PATH = "/healthcheck"

    def __init__(self, check: Any, app: WSGIApp) -> None:
        self.check = check
        self.app = app

    def __call__(self, environ: dict[str, Any],
                 start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "").rstrip("/") == self.PATH:
            return self.check(environ, start_response)  # type: ignore
        return self.app(environ, start_response)


def build_service(conf: cfg.ConfigOpts,
                  transport: messaging.RPCTransport | None = None
                  ) -> redirect_service.RedirectService:
    """The service objects from ``conf`` (the RPC transport may be
    given, e.g. the bus an in-process test shares with Nova)."""
    return redirect_service.RedirectService(
        nova_api.NovaLookup(conf),
        compute_rpc.ComputeClient(conf, transport=transport),
        record_store.RecordStore(record_store.connection_url(conf)),
        policies.make_enforcer(conf))


def create_app(conf: cfg.ConfigOpts,
               service: redirect_service.RedirectService | None = None,
               transport: messaging.RPCTransport | None = None) -> WSGIApp:
    """The WSGI application (app factory).

    :param conf: a ConfigOpts with :func:`nova_dcmigrate.conf.api.
        register_opts` applied and the configuration files loaded.
    :param service: what the routes call; built from ``conf`` if None
        (unit tests hand in one with fake Nova and RPC back ends).
    :raises NoauthRefused: noauth asked for without allow_noauth.
    """
    if conf.api.auth_strategy == "noauth" and not conf.api.allow_noauth:
        raise NoauthRefused(
            "[api] auth_strategy = noauth needs [api] allow_noauth = true "
            "(lab and tests only: every identity header is trusted)")
    app = flask.Flask(__name__)
    app.config["DCMIGRATE_CONF"] = conf
    app.config[SERVICE_KEY] = service or build_service(conf, transport)
    _routes(app)
    wsgi: WSGIApp = app.wsgi_app
    if conf.api.auth_strategy == "keystone":
        wsgi = auth_token.AuthProtocol(
            wsgi, {"oslo_config_config": conf,
                   "delay_auth_decision": "true"})
    else:
        LOG.warning("dcmigrate-api runs WITHOUT authentication "
                    "([api] auth_strategy = noauth)")
    wsgi = sizelimit.RequestBodySizeLimiter(wsgi, conf)
    wsgi = JsonErrors(wsgi)
    wsgi = _HealthcheckPath(healthcheck.Healthcheck(None, conf), wsgi)
    wsgi = request_id.RequestId(wsgi)
    wsgi = http_proxy_to_wsgi.HTTPProxyToWSGI(wsgi, conf)
    return wsgi


def new_conf(args: list[str] | None = None,
             default_config_files: list[str] | None = None
             ) -> cfg.ConfigOpts:
    """A ConfigOpts with every dcmigrate-api option, files loaded."""
    conf = cfg.ConfigOpts()
    api_conf.register_opts(conf)
    logging.register_options(conf)
    conf(args or [], project="nova-dcmigrate", prog="dcmigrate-api",
         default_config_files=default_config_files)
    return conf
