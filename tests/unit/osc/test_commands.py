"""The plugin's commands through OSC's own shell, in process.

``openstackclient.shell.main`` loads the plugin from its installed entry
points as the ``openstack`` command does; HTTP is requests-mock (the
identity service with a catalog, Nova's server lookup, and the dcmigrate
API).
"""

from __future__ import annotations

import json

import pytest
import yaml

from tests.unit.osc.oscshell import NOAUTH
from tests.unit.osc.oscshell import PASSWORD
from tests.unit.osc.oscshell import record
from tests.unit.osc.oscshell import run
from tests.unit.osc.oscshell import SERVER
from tests.unit.osc.oscshell import token
from tests.unit.osc.oscshell import URL
from tests.unit.osc.oscshell import NOVA


def test_create_json(mock, capsys):
    mock.post(URL, status_code=202, json={'redirect': record()})
    rc, out, err = run(capsys, *NOAUTH, 'server', 'migration', 'redirect',
                       SERVER, '--host', 'h3', '--reason', 'slow link',
                       '-f', 'json')
    assert rc == 0, err
    assert json.loads(out) == record()
    assert mock.last_request.json() == {'host': 'h3', 'reason': 'slow link'}
    # noauth mode sends the identity the lab API trusts, and no token
    # (keystoneauth's "none" plugin would add X-Auth-Token: notused).
    assert mock.last_request.headers['X-Roles'] == 'admin'
    assert 'X-Auth-Token' not in mock.last_request.headers


def test_create_noauth_identity_options(mock, capsys):
    mock.post(URL, status_code=202, json={'redirect': record()})
    rc, _, err = run(capsys, *NOAUTH, '--os-dcmigrate-noauth-roles',
                     'reader', '--os-dcmigrate-noauth-project', 'p1',
                     '--os-dcmigrate-noauth-user', 'u1',
                     '--os-dcmigrate-noauth-token', 'tok1', 'server',
                     'migration', 'redirect', SERVER)
    assert rc == 0, err
    h = mock.last_request.headers
    assert (h['X-Roles'], h['X-Project-Id'], h['X-User-Id'],
            h['X-Auth-Token']) == ('reader', 'p1', 'u1', 'tok1')


def test_create_table_shows_progress_mapping(mock, capsys):
    prog = {'bytes_from_source': 1, 'bytes_relayed': {'h2': 2},
            'pages_deduplicated': 3, 'remaining_bytes': 4,
            'estimated_completion': None}
    mock.post(URL, status_code=202,
              json={'redirect': record(state='running', progress=prog)})
    rc, out, err = run(capsys, *NOAUTH, 'server', 'migration', 'redirect',
                       SERVER)
    assert rc == 0, err
    assert '| progress        | bytes_from_source=1' in out
    assert '|                 | bytes_relayed.h2=2 ' in out
    assert '|                 | estimated_completion= ' in out
    assert '|                 | remaining_bytes=4 ' in out


def test_list_json(mock, capsys):
    mock.get(URL, json={'redirects': [record(id='b', state='running'),
                                      record(id='a', state='completed')]})
    rc, out, err = run(capsys, *NOAUTH, 'server', 'migration', 'redirect',
                       'list', SERVER, '-f', 'json')
    assert rc == 0, err
    rows = json.loads(out)
    assert [(r['ID'], r['State']) for r in rows] == [
        ('b', 'running'), ('a', 'completed')]
    assert set(rows[0]) == {'ID', 'State', 'Source', 'Old Destination',
                            'New Destination', 'Requested By', 'Reason',
                            'Created At', 'Finished At'}


def test_show_yaml(mock, capsys):
    ev = {'rate_mbit': 80.5}
    mock.get(URL + '/r1', json={'redirect': record(
        requested_by='trigger:slow-link', evidence=ev)})
    rc, out, err = run(capsys, *NOAUTH, 'server', 'migration', 'redirect',
                       'show', SERVER, 'r1', '-f', 'yaml')
    assert rc == 0, err
    doc = yaml.safe_load(out)
    assert doc['requested_by'] == 'trigger:slow-link'
    assert doc['evidence'] == ev


@pytest.mark.parametrize('status,title,message', [
    (400, 'Bad Request', 'Host h1 is the source of the migration.'),
    (403, 'Forbidden', 'Policy does not allow dcmigrate:redirect:create.'),
    (404, 'Not Found', 'Server has no running live migration.'),
    (409, 'Conflict', 'The migration is in post-copy.'),
    (503, 'Service Unavailable', 'The source compute h1 does not answer.'),
])
def test_api_errors_exit_1_with_the_message(mock, capsys, status, title,
                                            message):
    mock.post(URL, status_code=status, json={'error': {
        'code': status, 'title': title, 'message': message}})
    rc, out, err = run(capsys, *NOAUTH, 'server', 'migration', 'redirect',
                       SERVER, '--host', 'h1')
    assert rc == 1
    assert err.strip() == '%s (HTTP %d): %s' % (title, status, message)
    assert 'Traceback' not in err


def test_wait_failure_prints_record_then_exits_1(mock, capsys):
    mock.post(URL, status_code=202, json={'redirect': record()})
    failed = record(state='failed', error={
        'code': 'RedirectPrepareFailed', 'message': 'no agent on h3'})
    mock.get(URL + '/r1', [{'json': {'redirect': record(
        state='preparing')}}, {'json': {'redirect': failed}}])
    rc, out, err = run(capsys, *NOAUTH, 'server', 'migration', 'redirect',
                       SERVER, '--wait', '-f', 'json')
    assert rc == 1
    assert json.loads(out)['state'] == 'failed'
    assert 'redirect r1: preparing' in err
    assert err.strip().endswith(
        'redirect r1 ended failed: RedirectPrepareFailed: no agent on h3')


def test_noauth_name_needs_a_uuid(mock, capsys):
    rc, out, err = run(capsys, *NOAUTH, 'server', 'migration', 'redirect',
                       'list', 'vm1')
    assert rc == 1
    assert 'with --os-auth-type none give the server UUID' in err
    assert 'Traceback' not in err


def test_catalog_endpoint_and_server_name_through_nova(mock, capsys):
    token(mock)
    mock.get(NOVA + '/servers/vm1', status_code=404, json={})
    mock.get(NOVA + '/servers?name=vm1',
             json={'servers': [{'id': SERVER, 'name': 'vm1'}]})
    mock.get(NOVA + '/servers', json={'servers': [
        {'id': SERVER, 'name': 'vm1'}]})
    mock.get(NOVA + '/servers/detail', json={'servers': [
        {'id': SERVER, 'name': 'vm1'}]})
    mock.get(URL, json={'redirects': [record()]})
    rc, out, err = run(capsys, *PASSWORD, 'server', 'migration',
                       'redirect', 'list', 'vm1', '-f', 'json')
    assert rc == 0, err
    assert json.loads(out)[0]['ID'] == 'r1'
    last = mock.last_request
    assert last.url == URL
    assert last.headers['X-Auth-Token'] == 'tok'
    assert 'X-Roles' not in last.headers


def test_unknown_server_name(mock, capsys):
    token(mock)
    mock.get(NOVA + '/servers/nope', status_code=404, json={})
    mock.get(NOVA + '/servers', json={'servers': []})
    mock.get(NOVA + '/servers/detail', json={'servers': []})
    rc, out, err = run(capsys, *PASSWORD, 'server', 'migration',
                       'redirect', 'show', 'nope', 'r1')
    assert rc == 1
    assert "No server with a name or ID of 'nope' exists." in err
