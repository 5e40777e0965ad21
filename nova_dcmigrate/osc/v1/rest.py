"""REST client of the dcmigrate API v1 on a keystoneauth session.

Every failure becomes a :class:`RedirectAPIError` or another
``osc_lib.exceptions.CommandError`` subclass with a one-line message, so
OSC prints the API's own explanation instead of a traceback.
"""

from __future__ import annotations

from typing import Any
from urllib import parse

from keystoneauth1 import adapter
from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import session as ks_session
from osc_lib import exceptions

#: Seconds for one API call (the API answers at once; a redirect runs on).
TIMEOUT = 60.0


class EndpointError(exceptions.CommandError):
    """No usable dcmigrate endpoint (catalog entry or override)."""

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(
            'cannot find the dcmigrate API endpoint: %s (is a "dcmigrate" '
            'service in the catalog, or pass --os-dcmigrate-endpoint)'
            % detail)


class APIConnectionError(exceptions.CommandError):
    """The API did not answer at all."""

    def __init__(self, url: str, detail: str) -> None:
        self.url = url
        self.detail = detail
        super().__init__('cannot reach the dcmigrate API at %s: %s'
                         % (url, detail))


class RedirectAPIError(exceptions.CommandError):
    """The API answered with an error document (or a non-JSON error)."""

    def __init__(self, status: int, title: str, message: str) -> None:
        self.status = status
        self.title = title
        self.message = message
        super().__init__('%s (HTTP %d): %s' % (title, status, message))


class BadResponseError(exceptions.CommandError):
    """A success status with a body that is not what the contract says."""

    def __init__(self, url: str, detail: str) -> None:
        self.url = url
        self.detail = detail
        super().__init__('unexpected answer from the dcmigrate API (%s): %s'
                         % (url, detail))


def _error_from(resp: Any) -> RedirectAPIError:
    """Turn an error response into an exception carrying its fields."""
    title = resp.reason or 'Error'
    message = ''
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get('error'), dict):
        err = body['error']
        title = str(err.get('title') or title)
        message = str(err.get('message') or '')
    if not message:
        text = (resp.text or '').strip().splitlines()
        message = text[0][:200] if text else 'no details given'
    return RedirectAPIError(resp.status_code, title, message)


class RedirectClient:
    """The three redirect calls of the contract (CONTRACT-redirect-api)."""

    def __init__(self, session: ks_session.Session, *,
                 service_type: str = 'dcmigrate',
                 interface: str | None = None,
                 region_name: str | None = None,
                 endpoint_override: str | None = None,
                 headers: dict[str, str] | None = None,
                 authenticated: bool | None = None) -> None:
        # authenticated=False (noauth): the session adds no token of its
        # own (keystoneauth's "none" plugin would send "notused").
        self._authenticated = authenticated
        self._adapter = adapter.Adapter(
            session, service_type=service_type, interface=interface,
            region_name=region_name, endpoint_override=endpoint_override,
            additional_headers=headers or {})
        self._base: str | None = None

    @property
    def base_url(self) -> str:
        """Versioned root, e.g. ``http://h:8790/v1`` (catalog may omit v1)."""
        if self._base is None:
            try:
                endpoint = self._adapter.get_endpoint()
            except ks_exc.ClientException as exc:
                raise EndpointError(str(exc)) from None
            if not endpoint:
                raise EndpointError('no endpoint for service type '
                                    '"dcmigrate"')
            endpoint = endpoint.rstrip('/')
            if not endpoint.endswith('/v1'):
                endpoint += '/v1'
            self._base = endpoint
        return self._base

    def _url(self, server_id: str, redirect_id: str | None = None) -> str:
        url = '%s/servers/%s/redirects' % (
            self.base_url, parse.quote(server_id, safe=''))
        if redirect_id is not None:
            url += '/' + parse.quote(redirect_id, safe='')
        return url

    def _call(self, method: str, url: str, key: str,
              body: dict[str, Any] | None = None) -> Any:
        try:
            resp = self._adapter.request(
                url, method, json=body, raise_exc=False, timeout=TIMEOUT,
                headers={'Accept': 'application/json'},
                authenticated=self._authenticated)
        except (ks_exc.ConnectFailure, ks_exc.ConnectionError,
                ks_exc.RequestTimeout) as exc:
            raise APIConnectionError(url, str(exc)) from None
        if resp.status_code >= 400:
            raise _error_from(resp)
        try:
            doc = resp.json()
        except ValueError:
            raise BadResponseError(url, 'body is not JSON') from None
        if not isinstance(doc, dict) or key not in doc:
            raise BadResponseError(url, 'no "%s" in the body' % key)
        return doc[key]

    def create(self, server_id: str, host: str | None = None,
               reason: str | None = None) -> dict[str, Any]:
        """Redirect the server's running live migration (202)."""
        body: dict[str, Any] = {}
        if host:
            body['host'] = host
        if reason:
            body['reason'] = reason
        record = self._call('POST', self._url(server_id), 'redirect', body)
        return self._record(record, self._url(server_id))

    def list(self, server_id: str) -> list[dict[str, Any]]:
        """Every redirect of the server, newest first."""
        url = self._url(server_id)
        records = self._call('GET', url, 'redirects')
        if not isinstance(records, list):
            raise BadResponseError(url, '"redirects" is not a list')
        return [self._record(r, url) for r in records]

    def get(self, server_id: str, redirect_id: str) -> dict[str, Any]:
        """One redirect record, with live progress while it runs."""
        url = self._url(server_id, redirect_id)
        return self._record(self._call('GET', url, 'redirect'), url)

    @staticmethod
    def _record(record: Any, url: str) -> dict[str, Any]:
        if not isinstance(record, dict) or 'id' not in record \
                or 'state' not in record:
            raise BadResponseError(url, 'a redirect record needs "id" and '
                                        '"state"')
        return record
