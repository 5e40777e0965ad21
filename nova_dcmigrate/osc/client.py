"""OSC plugin module of the dcmigrate API (entry ``openstack.cli.extension``).

OSC reads the module attributes below (``API_NAME``, ``API_VERSION_OPTION``,
``DEFAULT_API_VERSION``, ``API_VERSIONS``), adds our global options through
``build_option_parser`` and builds ``client_manager.dcmigrate`` lazily with
``make_client`` once a command asks for it.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from osc_lib import exceptions
from osc_lib import utils

from nova_dcmigrate.osc.v1 import rest

LOG = logging.getLogger(__name__)

API_NAME = 'dcmigrate'
API_VERSION_OPTION = 'os_dcmigrate_api_version'
DEFAULT_API_VERSION = '1'
API_VERSIONS = {'1': 'nova_dcmigrate.osc.v1.rest.RedirectClient'}
SERVICE_TYPE = 'dcmigrate'

#: Identity sent in noauth mode (``--os-auth-type none``) when not given.
NOAUTH_DEFAULTS = {'user': 'noauth', 'project': 'noauth', 'roles': 'admin'}


def _noauth_headers(config: dict[str, Any]) -> dict[str, str]:
    """Identity headers the API trusts in its lab-only noauth mode.

    A token, if given, is passed on: the API forwards it to Nova (e.g.
    ``admin:<project>`` for a Nova API in its own noauth2 mode).
    """
    def value(key: str) -> str:
        return str(config.get('dcmigrate_noauth_' + key)
                   or NOAUTH_DEFAULTS[key])
    headers = {'X-User-Id': value('user'),
               'X-Project-Id': value('project'),
               'X-Roles': value('roles')}
    token = config.get('dcmigrate_noauth_token')
    if token:
        headers['X-Auth-Token'] = str(token)
    return headers


def make_client(instance: Any) -> rest.RedirectClient:
    """Return the REST client on OSC's keystoneauth session."""
    version = instance._api_version.get(API_NAME, DEFAULT_API_VERSION)
    if str(version) not in API_VERSIONS:
        raise exceptions.CommandError(
            'dcmigrate API version %s is not supported (supported: %s)'
            % (version, ', '.join(sorted(API_VERSIONS))))
    config = instance.get_configuration()
    headers: dict[str, str] = {}
    noauth = config.get('auth_type') == 'none'
    if noauth:
        headers = _noauth_headers(config)
    endpoint = config.get('dcmigrate_endpoint') or None
    LOG.debug('dcmigrate client: endpoint override %s, interface %s, '
              'region %s', endpoint, instance.interface,
              instance.region_name)
    return rest.RedirectClient(
        instance.session,
        service_type=SERVICE_TYPE,
        interface=instance.interface,
        region_name=instance.region_name,
        endpoint_override=endpoint,
        headers=headers,
        authenticated=False if noauth else None)


def build_option_parser(
        parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Global options of the plugin (``openstack --help`` lists them)."""
    parser.add_argument(
        '--os-dcmigrate-api-version',
        metavar='<dcmigrate-api-version>',
        default=utils.env('OS_DCMIGRATE_API_VERSION'),
        help='dcmigrate API version, default=%s '
             '(Env: OS_DCMIGRATE_API_VERSION)' % DEFAULT_API_VERSION)
    parser.add_argument(
        '--os-dcmigrate-endpoint',
        metavar='<url>',
        default=utils.env('OS_DCMIGRATE_ENDPOINT'),
        help='dcmigrate API endpoint, instead of the service catalog '
             '(service type "dcmigrate"); e.g. http://127.0.0.1:8790 '
             '(Env: OS_DCMIGRATE_ENDPOINT)')
    for key, what in (('user', 'user ID'), ('project', 'project ID'),
                      ('roles', 'comma-separated roles')):
        env = 'OS_DCMIGRATE_NOAUTH_' + key.upper()
        parser.add_argument(
            '--os-dcmigrate-noauth-' + key,
            metavar='<%s>' % key,
            default=utils.env(env),
            help='With --os-auth-type none only (lab API in noauth mode): '
                 'the %s sent to the dcmigrate API, default "%s" '
                 '(Env: %s)' % (what, NOAUTH_DEFAULTS[key], env))
    parser.add_argument(
        '--os-dcmigrate-noauth-token',
        metavar='<token>',
        default=utils.env('OS_DCMIGRATE_NOAUTH_TOKEN'),
        help='With --os-auth-type none only: an X-Auth-Token the '
             'dcmigrate API passes on to Nova, e.g. "admin:<project>" for '
             'a Nova API in noauth2 mode (Env: OS_DCMIGRATE_NOAUTH_TOKEN)')
    return parser
