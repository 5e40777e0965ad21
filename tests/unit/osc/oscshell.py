"""Shared pieces of the in-process OSC shell tests (requests-mock HTTP)."""

from __future__ import annotations

from keystoneauth1 import fixture as ks_fixture
from openstackclient import shell

SERVER = '6f1c8a2e-3b7d-4c5e-9a10-2b3c4d5e6f70'
DCM = 'http://dcm.test:8790'
URL = DCM + '/v1/servers/%s/redirects' % SERVER
AUTH = 'http://keystone.test/identity/v3'
NOVA = 'http://nova.test/compute/v2.1'

NOAUTH = ['--os-auth-type', 'none', '--os-dcmigrate-endpoint', DCM]


def record(**kw):
    rec = {'id': 'r1', 'server_id': SERVER, 'migration_id': 'm1',
           'state': 'requested', 'source': 'h1', 'old_destination': 'h2',
           'new_destination': 'h3', 'requested_by': 'user:u1',
           'reason': 'slow link', 'evidence': None,
           'created_at': '2026-12-03T12:00:00+00:00',
           'updated_at': '2026-12-03T12:00:00+00:00', 'finished_at': None,
           'progress': None, 'error': None}
    rec.update(kw)
    return rec


def run(capsys, *argv):
    rc = shell.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def token(mock):
    token = ks_fixture.V3Token(project_id='p1', user_id='u1')
    token.add_role(name='admin')
    svc = token.add_service('compute')
    svc.add_standard_endpoints(public=NOVA, region='R1')
    svc = token.add_service('dcmigrate')
    svc.add_standard_endpoints(public=DCM, internal='http://int.test:1',
                               region='R1')
    mock.get(AUTH, json={'version': {
        'id': 'v3.14', 'status': 'stable', 'media-types': [],
        'links': [{'rel': 'self', 'href': AUTH + '/'}]}})
    mock.post(AUTH + '/auth/tokens', json=token,
              headers={'X-Subject-Token': 'tok'})
    mock.get(NOVA, json={'version': {
        'id': 'v2.1', 'status': 'CURRENT', 'min_version': '2.1',
        'version': '2.104', 'links': [{'rel': 'self', 'href': NOVA}]}})


PASSWORD = ['--os-auth-url', AUTH, '--os-username', 'u',
            '--os-password', 'p', '--os-project-id', 'p1',
            '--os-user-domain-id', 'default', '--os-region-name', 'R1',
            '--os-interface', 'public']
