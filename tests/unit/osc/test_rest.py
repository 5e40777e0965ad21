"""RedirectClient: URLs, bodies, headers and the error mapping.

The HTTP side is requests-mock on a real keystoneauth session.
"""

from __future__ import annotations

import pytest
import requests_mock
from keystoneauth1 import noauth
from keystoneauth1 import session as ks_session
from osc_lib import exceptions

from nova_dcmigrate.osc.v1 import rest

EP = 'http://dcm.test:8790'
SERVER = '6f1c8a2e-3b7d-4c5e-9a10-2b3c4d5e6f70'
URL = EP + '/v1/servers/%s/redirects' % SERVER


def record(**kw):
    rec = {'id': 'r1', 'state': 'requested', 'server_id': SERVER}
    rec.update(kw)
    return rec


def client(endpoint=EP, headers=None):
    sess = ks_session.Session(auth=noauth.NoAuth())
    return rest.RedirectClient(sess, endpoint_override=endpoint,
                               headers=headers)


@pytest.fixture
def mock():
    with requests_mock.Mocker() as m:
        yield m


def test_create_posts_host_and_reason(mock):
    mock.post(URL, status_code=202, json={'redirect': record()})
    rec = client().create(SERVER, host='h3', reason='slow link')
    assert rec['id'] == 'r1'
    assert mock.last_request.json() == {'host': 'h3', 'reason': 'slow link'}


def test_create_without_host_sends_empty_body(mock):
    mock.post(URL, status_code=202, json={'redirect': record()})
    client().create(SERVER)
    assert mock.last_request.json() == {}


def test_list_and_get(mock):
    mock.get(URL, json={'redirects': [record(id='b'), record(id='a')]})
    mock.get(URL + '/b', json={'redirect': record(id='b')})
    c = client()
    assert [r['id'] for r in c.list(SERVER)] == ['b', 'a']
    assert c.get(SERVER, 'b')['id'] == 'b'


@pytest.mark.parametrize('endpoint', [EP, EP + '/', EP + '/v1',
                                      EP + '/v1/'])
def test_catalog_endpoint_with_or_without_version(mock, endpoint):
    mock.get(URL, json={'redirects': []})
    assert client(endpoint).list(SERVER) == []


def test_ids_are_quoted(mock):
    mock.get(EP + '/v1/servers/a%2Fb/redirects', json={'redirects': []})
    assert client().list('a/b') == []


def test_noauth_identity_headers(mock):
    mock.get(URL, json={'redirects': []})
    client(headers={'X-Roles': 'admin', 'X-User-Id': 'u'}).list(SERVER)
    assert mock.last_request.headers['X-Roles'] == 'admin'
    assert mock.last_request.headers['X-User-Id'] == 'u'


@pytest.mark.parametrize('status,title,message', [
    (400, 'Bad Request', 'Host h1 is the source of the migration.'),
    (400, 'Bad Request', 'Unknown compute host nope.'),
    (403, 'Forbidden', 'Policy does not allow dcmigrate:redirect:create.'),
    (404, 'Not Found', 'Server x has no running live migration.'),
    (409, 'Conflict', 'The migration is switching over.'),
    (503, 'Service Unavailable', 'The source compute h1 does not answer.'),
])
def test_error_documents_become_command_errors(mock, status, title,
                                               message):
    mock.post(URL, status_code=status, json={'error': {
        'code': status, 'title': title, 'message': message}})
    with pytest.raises(rest.RedirectAPIError) as exc:
        client().create(SERVER, host='h1')
    assert isinstance(exc.value, exceptions.CommandError)
    assert (exc.value.status, exc.value.title, exc.value.message) == (
        status, title, message)
    assert str(exc.value) == '%s (HTTP %d): %s' % (title, status, message)


def test_non_json_error_uses_status_line_and_text(mock):
    mock.get(URL, status_code=502, reason='Bad Gateway',
             text='<html>\nproxy down</html>')
    with pytest.raises(rest.RedirectAPIError) as exc:
        client().list(SERVER)
    assert str(exc.value) == 'Bad Gateway (HTTP 502): <html>'


def test_error_without_message_still_says_something(mock):
    mock.get(URL, status_code=404, reason='Not Found', text='')
    with pytest.raises(rest.RedirectAPIError, match='no details given'):
        client().list(SERVER)


@pytest.mark.parametrize('body,why', [
    ('not json', 'body is not JSON'),
    ('{"x": 1}', 'no "redirects" in the body'),
    ('{"redirects": {}}', '"redirects" is not a list'),
    ('{"redirects": [{"id": "a"}]}', 'needs "id" and "state"'),
])
def test_malformed_success_bodies(mock, body, why):
    mock.get(URL, text=body)
    with pytest.raises(rest.BadResponseError, match=why):
        client().list(SERVER)


def test_connection_refused_is_a_clear_error():
    # A real socket: nothing listens on port 1 of 127.0.0.1.
    c = client('http://127.0.0.1:1')
    with pytest.raises(rest.APIConnectionError,
                       match='cannot reach the dcmigrate API at '
                             'http://127.0.0.1:1/v1/servers/'):
        c.list(SERVER)


def test_no_endpoint_is_a_clear_error():
    c = client(endpoint=None)
    with pytest.raises(rest.EndpointError,
                       match='--os-dcmigrate-endpoint'):
        c.list(SERVER)
