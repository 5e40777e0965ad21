"""A stand-in dcmigrate API: a real HTTP server implementing the contract.

STAND-IN, not the real service: the OSC plugin's tests run against this
small in-memory implementation of CONTRACT-redirect-api.md (records,
status codes, error documents, noauth identity headers) so that they need
no Nova.  tests/functional/nova/test_osc.py runs the same commands against
the real API app on Nova's in-process harness.

Each GET of a record advances it one step along ``script`` (by default
requested -> preparing -> running -> running -> completed), so ``--wait``
sees live progress.
"""

from __future__ import annotations

import datetime
import http.server
import json
import re
import threading
import uuid
from typing import Any

ADMIN = 'admin'
READ_ROLES = frozenset(('admin', 'reader', 'member'))
MIB = 1024 * 1024


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


class Migration:
    """A server's running live migration as the stand-in knows it."""

    def __init__(self, source: str, destination: str,
                 project: str = 'noauth') -> None:
        self.source = source
        self.destination = destination
        self.project = project
        self.source_down = False
        self.script = ['requested', 'preparing', 'running', 'running',
                       'completed']


class StandinAPI:
    """State shared by the request handlers (one per test)."""

    def __init__(self) -> None:
        self.hosts = {'src', 'dst', 'new', 'other'}
        self.migrations: dict[str, Migration] = {}
        self.stopped: set[str] = set()   # servers that exist, not migrating
        self.records: dict[str, list[dict[str, Any]]] = {}
        self.steps: dict[str, list[str]] = {}
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        self.lock = threading.Lock()

    # -- contract ---------------------------------------------------------
    def create(self, server: str, body: Any, ident: dict[str, str]
               ) -> tuple[int, dict[str, Any]]:
        if ADMIN not in ident['roles']:
            return _err(403, 'Forbidden', 'Policy does not allow '
                        'dcmigrate:redirect:create to be performed.')
        if not isinstance(body, dict) or set(body) - {'host', 'reason'} \
                or any(not isinstance(v, str) for v in body.values()):
            return _err(400, 'Bad Request', 'Invalid input for field/'
                        'attribute: body must be {"host": str, "reason": '
                        'str}, both optional.')
        mig = self._migration(server)
        if isinstance(mig, tuple):
            return mig
        host = body.get('host')
        if host == mig.source:
            return _err(400, 'Bad Request', 'Host %s is the source of the '
                        'migration.' % host)
        if host == mig.destination:
            return _err(400, 'Bad Request', 'Host %s is already the '
                        'destination of the migration.' % host)
        if host is not None and host not in self.hosts:
            return _err(400, 'Bad Request', 'Unknown compute host %s.'
                        % host)
        if mig.source_down:
            return _err(503, 'Service Unavailable', 'The source compute %s '
                        'does not answer.' % mig.source)
        if any(r['state'] in ('requested', 'preparing')
               for r in self.records.get(server, [])):
            return _err(409, 'Conflict', 'Another redirect of this '
                        'migration is still preparing.')
        now = _now()
        rec: dict[str, Any] = {
            'id': str(uuid.uuid4()), 'server_id': server,
            'migration_id': str(uuid.uuid5(uuid.NAMESPACE_URL, server)),
            'state': 'requested', 'source': mig.source,
            'old_destination': mig.destination, 'new_destination': host,
            'requested_by': 'user:' + ident['user'],
            'reason': body.get('reason'), 'evidence': None,
            'created_at': now, 'updated_at': now, 'finished_at': None,
            'progress': None, 'error': None}
        self.records.setdefault(server, []).insert(0, rec)
        self.steps[rec['id']] = list(mig.script[1:])
        return 202, {'redirect': dict(rec)}

    def list(self, server: str, ident: dict[str, str]
             ) -> tuple[int, dict[str, Any]]:
        if not READ_ROLES & set(ident['roles']):
            return _err(403, 'Forbidden', 'Policy does not allow '
                        'dcmigrate:redirect:list to be performed.')
        if server not in self.migrations and server not in self.stopped:
            return _err(404, 'Not Found', 'Server %s could not be found.'
                        % server)
        return 200, {'redirects': [dict(r) for r in
                                   self.records.get(server, [])]}

    def show(self, server: str, rid: str, ident: dict[str, str]
             ) -> tuple[int, dict[str, Any]]:
        for rec in self.records.get(server, []):
            if rec['id'] == rid:
                self._advance(rec)
                return 200, {'redirect': dict(rec)}
        return _err(404, 'Not Found', 'Redirect %s of server %s could not '
                    'be found.' % (rid, server))

    # -- helpers ----------------------------------------------------------
    def _migration(self, server: str) -> Migration | tuple[int, Any]:
        if server in self.stopped:
            return _err(404, 'Not Found', 'Server %s has no running live '
                        'migration.' % server)
        mig = self.migrations.get(server)
        if mig is None:
            return _err(404, 'Not Found', 'Server %s could not be found.'
                        % server)
        return mig

    def _advance(self, rec: dict[str, Any]) -> None:
        steps = self.steps.get(rec['id'])
        if not steps:
            return
        state = steps.pop(0)
        mig = self.migrations[rec['server_id']]
        rec['state'] = state
        rec['updated_at'] = _now()
        if rec['new_destination'] is None and state != 'requested':
            rec['new_destination'] = 'new'
        if state in ('running', 'completed', 'failed', 'rolled-back'):
            prog = rec['progress'] or {
                'bytes_from_source': 0,
                'bytes_relayed': {mig.destination: 0},
                'pages_deduplicated': 0, 'remaining_bytes': 384 * MIB,
                'estimated_completion': None}
            prog['bytes_from_source'] += 32 * MIB
            prog['bytes_relayed'][mig.destination] += 96 * MIB
            prog['pages_deduplicated'] += 1000
            prog['remaining_bytes'] = (
                prog['remaining_bytes'] - 128 * MIB if state == 'running'
                else 0)
            prog['estimated_completion'] = (
                datetime.datetime.now(datetime.timezone.utc)
                + datetime.timedelta(seconds=5)).isoformat()
            rec['progress'] = prog
        if state == 'failed':
            rec['error'] = {'code': 'RedirectPrepareFailed',
                            'message': 'agent on new did not answer'}
        if state in ('completed', 'failed', 'rolled-back'):
            rec['finished_at'] = _now()


def _err(status: int, title: str, message: str
         ) -> tuple[int, dict[str, Any]]:
    return status, {'error': {'code': status, 'title': title,
                              'message': message}}


_REDIRECTS = re.compile(r'^/v1/servers/([^/]+)/redirects(?:/([^/]+))?/?$')


class _Handler(http.server.BaseHTTPRequestHandler):
    api: StandinAPI

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _ident(self) -> dict[str, Any]:
        roles = self.headers.get('X-Roles', '')
        return {'user': self.headers.get('X-User-Id', ''),
                'project': self.headers.get('X-Project-Id', ''),
                'roles': [r.strip() for r in roles.split(',') if r.strip()]}

    def _reply(self, status: int, doc: Any,
               headers: dict[str, str] | None = None) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _route(self, method: str) -> None:
        length = int(self.headers.get('Content-Length') or 0)
        raw = self.rfile.read(length) if length else b''
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        api = self.api
        with api.lock:
            api.requests.append((method, self.path, dict(self.headers),
                                 body))
            m = _REDIRECTS.match(self.path)
            if m is None:
                status, doc = _err(404, 'Not Found', 'No such resource.')
            elif method == 'POST' and m.group(2) is None:
                status, doc = api.create(m.group(1), body, self._ident())
            elif method == 'GET' and m.group(2) is None:
                status, doc = api.list(m.group(1), self._ident())
            elif method == 'GET':
                status, doc = api.show(m.group(1), m.group(2),
                                       self._ident())
            else:
                status, doc = _err(405, 'Method Not Allowed',
                                   'Method not allowed.')
        headers = {}
        if status == 202:
            headers['Location'] = '%s/%s' % (self.path.rstrip('/'),
                                             doc['redirect']['id'])
        self._reply(status, doc, headers)

    def do_GET(self) -> None:
        self._route('GET')

    def do_POST(self) -> None:
        self._route('POST')


class StandinServer:
    """Serve a :class:`StandinAPI` on 127.0.0.1:<free port> in a thread."""

    def __init__(self) -> None:
        self.api = StandinAPI()
        handler = type('Handler', (_Handler,), {'api': self.api})
        self._httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0),
                                                      handler)
        self.url = 'http://127.0.0.1:%d' % self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        daemon=True)

    def __enter__(self) -> StandinServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)
