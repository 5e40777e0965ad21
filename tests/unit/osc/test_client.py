"""The plugin module OSC loads (entry point ``openstack.cli.extension``)."""

from __future__ import annotations

import argparse
import importlib.metadata
import types

import pytest
from keystoneauth1 import noauth
from keystoneauth1 import session as ks_session
from osc_lib import exceptions

from nova_dcmigrate.osc import client
from nova_dcmigrate.osc.v1 import rest


def test_entry_points_are_installed():
    eps = importlib.metadata.entry_points()
    ext = {e.name: e.value for e in eps.select(
        group='openstack.cli.extension')}
    assert ext['dcmigrate'] == 'nova_dcmigrate.osc.client'
    cmds = {e.name for e in eps.select(group='openstack.dcmigrate.v1')}
    assert cmds == {'server_migration_redirect',
                    'server_migration_redirect_list',
                    'server_migration_redirect_show'}
    hooks = [e.value for e in eps.select(
        group='openstack.cli.server_migrate')]
    assert hooks == ['nova_dcmigrate.osc.hooks:RedirectMigrationHook']


def test_module_attributes_osc_reads():
    assert client.API_NAME == 'dcmigrate'
    # OSC strips the first "os_" and reads the option from the config.
    assert client.API_VERSION_OPTION == 'os_dcmigrate_api_version'
    assert client.DEFAULT_API_VERSION in client.API_VERSIONS
    assert isinstance(client.API_VERSIONS, dict)


def test_option_parser_reads_env(monkeypatch):
    monkeypatch.setenv('OS_DCMIGRATE_ENDPOINT', 'http://e:8790')
    monkeypatch.setenv('OS_DCMIGRATE_NOAUTH_ROLES', 'reader')
    parser = client.build_option_parser(argparse.ArgumentParser())
    args = parser.parse_args([])
    assert args.os_dcmigrate_endpoint == 'http://e:8790'
    assert args.os_dcmigrate_noauth_roles == 'reader'
    assert args.os_dcmigrate_api_version is None


def _instance(version='1', **config):
    return types.SimpleNamespace(
        _api_version={'dcmigrate': version},
        get_configuration=lambda: dict(config),
        session=ks_session.Session(auth=noauth.NoAuth()),
        interface='internal', region_name='R1')


def test_make_client_uses_the_override_and_osc_interface_region():
    c = client.make_client(_instance(auth_type='password',
                                     dcmigrate_endpoint='http://e:1'))
    assert isinstance(c, rest.RedirectClient)
    assert c.base_url == 'http://e:1/v1'
    assert c._adapter.interface == 'internal'
    assert c._adapter.region_name == 'R1'
    assert c._adapter.service_type == 'dcmigrate'
    assert not c._adapter.additional_headers


def test_make_client_noauth_identity():
    c = client.make_client(_instance(auth_type='none',
                                     dcmigrate_noauth_project='p9'))
    assert c._adapter.additional_headers == {
        'X-User-Id': 'noauth', 'X-Project-Id': 'p9', 'X-Roles': 'admin'}


def test_make_client_noauth_token_passed_on():
    c = client.make_client(_instance(auth_type='none',
                                     dcmigrate_noauth_token='admin:p1'))
    assert c._adapter.additional_headers['X-Auth-Token'] == 'admin:p1'


def test_make_client_refuses_unknown_version():
    with pytest.raises(exceptions.CommandError,
                       match='dcmigrate API version 2 is not supported'):
        client.make_client(_instance(version='2'))
