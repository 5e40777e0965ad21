"""The ``openstack server migrate --redirect`` hook.

Without ``--redirect`` the stock command must be exactly as before: same
parser apart from ``--redirect``, ``before()`` hands the arguments back
untouched, and the real OSC shell still sends Nova's migrate action.  With
it, the redirect is made in ``before()`` and cliff's documented early exit
(``HelpExit``) ends the command with status 0 before the stock migrate.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import types

import pytest
from cliff import help as cliff_help
from keystoneauth1 import noauth
from keystoneauth1 import session as ks_session
from openstackclient.compute.v2 import server as osc_server
from osc_lib import exceptions

from nova_dcmigrate.osc import hooks
from nova_dcmigrate.osc.v1 import rest
from tests.unit.osc.oscshell import DCM
from tests.unit.osc.oscshell import NOAUTH
from tests.unit.osc.oscshell import NOVA
from tests.unit.osc.oscshell import PASSWORD
from tests.unit.osc.oscshell import record
from tests.unit.osc.oscshell import run
from tests.unit.osc.oscshell import SERVER
from tests.unit.osc.oscshell import token
from tests.unit.osc.oscshell import URL


class _App:
    """What cliff's Command and our hook use of the application."""

    def __init__(self, namespace='openstack.cli'):
        self.command_manager = types.SimpleNamespace(namespace=namespace)
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        sess = ks_session.Session(auth=noauth.NoAuth())
        self.client_manager = types.SimpleNamespace(
            dcmigrate=rest.RedirectClient(sess, endpoint_override=DCM),
            get_configuration=lambda: {'auth_type': 'none'})


def migrate_command(hooked=True):
    app = _App()
    # cliff loads hooks only for a named command (group
    # openstack.cli.server_migrate, from the installed entry points).
    cmd = osc_server.MigrateServer(app, None,
                                   'server migrate' if hooked else None)
    return cmd, cmd.get_parser('openstack server migrate')


def describe_actions(parser):
    return [(a.option_strings, a.dest, a.default, a.nargs, a.const,
             a.required, a.choices, a.help, a.metavar, type(a).__name__)
            for a in parser._actions]


def test_hook_is_registered_for_server_migrate():
    cmd, _ = migrate_command()
    assert [(e.name, type(e.obj)) for e in cmd._hooks] == [
        ('dcmigrate_redirect', hooks.RedirectMigrationHook)]


def test_parser_is_stock_apart_from_redirect():
    _, stock = migrate_command(hooked=False)
    _, hooked = migrate_command()
    extra = [a for a in describe_actions(hooked)
             if a not in describe_actions(stock)]
    assert [a[0] for a in extra] == [['--redirect']]
    assert [a for a in describe_actions(hooked)
            if a[0] != ['--redirect']] == describe_actions(stock)
    # Mutually exclusive groups of the stock command are unchanged too.
    assert [[a.dest for a in g._group_actions]
            for g in hooked._mutually_exclusive_groups] == [
        [a.dest for a in g._group_actions]
        for g in stock._mutually_exclusive_groups]


@pytest.mark.parametrize('argv', [
    [SERVER],
    ['--live-migration', '--host', 'h3', '--wait', SERVER],
    ['--block-migration', '--disk-overcommit', SERVER],
])
def test_before_returns_args_unchanged_without_redirect(mock, argv):
    cmd, parser = migrate_command()
    args = parser.parse_args(argv)
    snapshot = copy.deepcopy(vars(args))
    for ext in cmd._hooks:
        assert ext.obj.before(args) is args
    assert vars(args) == snapshot
    assert not mock.called
    assert cmd.app.stdout.getvalue() == ''


def test_before_redirects_then_exits_early(mock):
    mock.post(URL, status_code=202, json={'redirect': record()})
    cmd, parser = migrate_command()
    args = parser.parse_args(['--redirect', '--host', 'h3', SERVER])
    with pytest.raises(cliff_help.HelpExit):
        cmd._run_before_hooks(args)
    assert mock.last_request.json() == {'host': 'h3'}
    assert cmd.app.stdout.getvalue() == (
        'redirect r1: requested, new destination h3\n')


@pytest.mark.parametrize('option', [
    '--block-migration', '--shared-migration', '--disk-overcommit',
    '--no-disk-overcommit'])
def test_redirect_refuses_new_migration_options(mock, option):
    cmd, parser = migrate_command()
    args = parser.parse_args(['--redirect', option, SERVER])
    with pytest.raises(exceptions.CommandError,
                       match='cannot be used with --redirect'):
        cmd._run_before_hooks(args)
    assert not mock.called


def test_shell_redirect_exit_0_without_stock_migrate(mock, capsys):
    # No Nova URL is mocked: a migrate action would fail the command.
    mock.post(URL, status_code=202, json={'redirect': record()})
    rc, out, err = run(capsys, *NOAUTH, 'server', 'migrate', '--redirect',
                       '--host', 'h3', SERVER)
    assert rc == 0, err
    assert out == 'redirect r1: requested, new destination h3\n'
    assert [r.method for r in mock.request_history] == ['POST']


def test_shell_redirect_wait_failure_exit_1(mock, capsys):
    mock.post(URL, status_code=202, json={'redirect': record()})
    mock.get(URL + '/r1', json={'redirect': record(
        state='rolled-back', error={'code': 'DestinationFailed',
                                    'message': 'h3 died'})})
    rc, out, err = run(capsys, *NOAUTH, 'server', 'migrate', '--redirect',
                       '--wait', SERVER)
    assert rc == 1
    assert 'redirect r1 ended rolled-back: DestinationFailed: h3 died' in err
    assert 'Traceback' not in err


def test_shell_api_error_exit_1(mock, capsys):
    mock.post(URL, status_code=404, json={'error': {
        'code': 404, 'title': 'Not Found',
        'message': 'Server has no running live migration.'}})
    rc, out, err = run(capsys, *NOAUTH, 'server', 'migrate', '--redirect',
                       SERVER)
    assert rc == 1
    assert err.strip() == ('Not Found (HTTP 404): Server has no running '
                           'live migration.')


def test_shell_stock_migrate_unchanged(mock, capsys):
    token(mock)
    srv = {'id': SERVER, 'name': 'vm1', 'status': 'ACTIVE'}
    mock.get(NOVA + '/servers/' + SERVER, json={'server': srv})
    mock.post(NOVA + '/servers/%s/action' % SERVER, status_code=202)
    rc, out, err = run(capsys, *PASSWORD, 'server', 'migrate',
                       '--live-migration', SERVER)
    assert rc == 0, err
    actions = [r for r in mock.request_history
               if r.url.endswith('/action')]
    assert len(actions) == 1
    body = json.loads(actions[0].text)
    assert list(body) == ['os-migrateLive']
    assert not [r for r in mock.request_history if DCM in r.url]


def test_help_shows_redirect(capsys):
    rc, out, err = run(capsys, 'server', 'migrate', '--help')
    assert rc == 0, err
    assert '--redirect' in out
    assert '--host <hostname>' in out


def test_hook_epilog_and_after_are_neutral():
    cmd, _ = migrate_command()
    hook = list(cmd._hooks)[0].obj
    assert hook.get_epilog() == ''
    assert hook.after(argparse.Namespace(), 7) == 7
