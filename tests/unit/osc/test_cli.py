"""The real ``openstack`` command in a subprocess against a real HTTP server.

The server is the STAND-IN of tests/unit/osc/standin.py (the contract in
memory, no Nova); tests/functional/nova/test_osc.py runs the commands
against the real API app.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys

import pytest
import yaml

from tests.unit.osc import standin

OPENSTACK = os.path.join(os.path.dirname(sys.executable), 'openstack')
SERVER = '0b1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4d'
IDLE = '1b1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4d'


@pytest.fixture
def api():
    with standin.StandinServer() as srv:
        srv.api.migrations[SERVER] = standin.Migration('src', 'dst')
        srv.api.stopped.add(IDLE)
        yield srv


def openstack(api, *argv, stderr=subprocess.PIPE, **kw):
    env = {k: v for k, v in os.environ.items() if not k.startswith('OS_')}
    env['COLUMNS'] = '160'
    return subprocess.run(
        [OPENSTACK, '--os-auth-type', 'none', '--os-dcmigrate-endpoint',
         api.url, *argv], stdout=subprocess.PIPE, stderr=stderr, text=True,
        env=env, timeout=60, **kw)


def test_create_list_show_json(api):
    p = openstack(api, 'server', 'migration', 'redirect', SERVER, '--host',
                  'new', '--reason', 'slow link', '-f', 'json')
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)
    assert (rec['state'], rec['source'], rec['old_destination'],
            rec['new_destination'], rec['reason'], rec['requested_by']) == (
        'requested', 'src', 'dst', 'new', 'slow link', 'user:noauth')
    method, path, headers, body = api.api.requests[-1]
    assert (method, body) == ('POST', {'host': 'new', 'reason': 'slow link'})
    assert path == '/v1/servers/%s/redirects' % SERVER

    p = openstack(api, 'server', 'migration', 'redirect', 'list', SERVER,
                  '-f', 'json')
    assert p.returncode == 0, p.stderr
    assert [r['ID'] for r in json.loads(p.stdout)] == [rec['id']]

    p = openstack(api, 'server', 'migration', 'redirect', 'show', SERVER,
                  rec['id'], '-f', 'yaml')
    assert p.returncode == 0, p.stderr
    shown = yaml.safe_load(p.stdout)
    assert (shown['id'], shown['state']) == (rec['id'], 'preparing')


def test_wait_plain_progress_and_success(api):
    p = openstack(api, 'server', 'migration', 'redirect', SERVER,
                  '--wait', '-f', 'json')
    assert p.returncode == 0, p.stderr
    final = json.loads(p.stdout)
    assert final['state'] == 'completed'
    assert final['new_destination'] == 'new'   # re-picked
    assert final['progress']['remaining_bytes'] == 0
    lines = p.stderr.splitlines()
    assert [ln.split(',')[0].split(': ')[1] for ln in lines] == [
        'preparing', 'running', 'running', 'completed']
    assert 'from source 32.0 MiB, relayed dst 96.0 MiB' in lines[1]
    assert 'remaining 256.0 MiB' in lines[1]


def test_wait_progress_bar_on_a_terminal(api):
    main, sub = pty.openpty()
    try:
        p = openstack(api, 'server', 'migration', 'redirect', SERVER,
                      '--host', 'new', '--wait', '-f', 'value', '-c',
                      'state', stderr=sub)
        os.close(sub)
        sub = -1
        chunks = []
        while True:
            try:
                data = os.read(main, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(main)
        if sub != -1:
            os.close(sub)
    tty = b''.join(chunks).decode(errors='replace')
    assert p.returncode == 0, tty
    assert p.stdout.strip() == 'completed'
    assert 'redirect completed -> new' in tty
    assert '384.0/384.0 MiB' in tty
    assert 'estimate:' in tty
    assert '\x1b[' in tty   # a live display, not plain lines


def test_wait_failed_exits_1(api):
    api.api.migrations[SERVER].script = ['requested', 'running', 'failed']
    p = openstack(api, 'server', 'migration', 'redirect', SERVER, '--wait',
                  '-f', 'json')
    assert p.returncode == 1
    assert json.loads(p.stdout)['state'] == 'failed'
    assert p.stderr.splitlines()[-1].startswith(
        'redirect ') and p.stderr.splitlines()[-1].endswith(
        'ended failed: RedirectPrepareFailed: agent on new did not answer')


def test_api_error_message(api):
    # Every status code's mapping is covered in process (test_commands.py).
    p = openstack(api, 'server', 'migration', 'redirect', IDLE)
    assert p.returncode == 1
    assert p.stderr.strip() == ('Not Found (HTTP 404): Server %s has no '
                                'running live migration.' % IDLE)
    assert p.stdout == ''


def test_api_down_is_a_clear_error(api):
    env = {k: v for k, v in os.environ.items() if not k.startswith('OS_')}
    p = subprocess.run(
        [OPENSTACK, '--os-auth-type', 'none', '--os-dcmigrate-endpoint',
         'http://127.0.0.1:1', 'server', 'migration', 'redirect', 'list',
         SERVER], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 1
    assert p.stderr.startswith('cannot reach the dcmigrate API at '
                               'http://127.0.0.1:1/v1/servers/')
    assert 'Traceback' not in p.stderr


def test_server_migrate_redirect_wait(api):
    p = openstack(api, 'server', 'migrate', '--redirect', '--host', 'new',
                  '--wait', SERVER)
    assert p.returncode == 0, p.stderr
    out = p.stdout.splitlines()
    assert out[0].endswith(': requested, new destination new')
    assert ': completed, new destination new' in out[1]
    assert [m for m, *_ in api.api.requests].count('POST') == 1


def test_server_migrate_help_shows_redirect(api):
    p = openstack(api, 'server', 'migrate', '--help')
    assert p.returncode == 0, p.stderr
    assert '--redirect' in p.stdout
    assert 'Redirect the server\'s running live migration' in ' '.join(
        p.stdout.split())
