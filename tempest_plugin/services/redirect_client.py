"""Service client of the redirect REST API (service type ``dcmigrate``).

Paths and bodies: CONTRACT of the redirect API (doc/source/api.rst once
branch api lands): ``POST/GET /v1/servers/{id}/redirects[/{redirect}]``.
Error responses raise tempest's usual lib exceptions (BadRequest,
Forbidden, NotFound, Conflict), so tests assert on the status only.
"""

from __future__ import annotations

from urllib import parse

from oslo_serialization import jsonutils as json
from tempest.lib.common import rest_client


class RedirectClient(rest_client.RestClient):
    """Create, list and show redirects of a server's live migration."""

    api_version = "v1"

    def _path(self, server_id: str, redirect_id: str | None = None) -> str:
        path = "servers/%s/redirects" % parse.quote(server_id)
        if redirect_id is not None:
            path += "/%s" % parse.quote(redirect_id)
        return path

    def create_redirect(self, server_id: str, host: str | None = None,
                        reason: str | None = None) -> rest_client.ResponseBody:
        body: dict[str, str] = {}
        if host is not None:
            body["host"] = host
        if reason is not None:
            body["reason"] = reason
        resp, data = self.post(self._path(server_id), json.dumps(body))
        self.expected_success(202, resp.status)
        return rest_client.ResponseBody(resp, json.loads(data))

    def list_redirects(self, server_id: str) -> rest_client.ResponseBody:
        resp, data = self.get(self._path(server_id))
        self.expected_success(200, resp.status)
        return rest_client.ResponseBody(resp, json.loads(data))

    def show_redirect(self, server_id: str,
                      redirect_id: str) -> rest_client.ResponseBody:
        resp, data = self.get(self._path(server_id, redirect_id))
        self.expected_success(200, resp.status)
        return rest_client.ResponseBody(resp, json.loads(data))
