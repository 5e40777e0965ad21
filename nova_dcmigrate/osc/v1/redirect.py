"""``openstack server migration redirect [list|show]`` (dcmigrate API v1).

Next to OSC's own ``server migration abort|force complete|list|show``:
redirect a running live migration to another host (``--host``) or let the
scheduler re-pick one, and read the redirect records the source compute
keeps for the server.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable
from collections.abc import Sequence
from typing import Any

from cliff import columns
from openstack import exceptions as sdk_exc
from osc_lib.command import command
from osc_lib import exceptions
from oslo_utils import uuidutils

from nova_dcmigrate.osc import progress
from nova_dcmigrate.osc.v1 import rest

LOG = logging.getLogger(__name__)

#: Fields of a redirect record, in the order ``show`` prints them.
RECORD_FIELDS = (
    'id', 'server_id', 'migration_id', 'state', 'source',
    'old_destination', 'new_destination', 'requested_by', 'reason',
    'evidence', 'created_at', 'updated_at', 'finished_at', 'progress',
    'error')
#: Fields holding a mapping (``key='value'`` in a table, JSON otherwise).
DICT_FIELDS = frozenset(('evidence', 'progress', 'error'))
#: ``list`` columns: (header, record field).
LIST_COLUMNS = (
    ('ID', 'id'), ('State', 'state'), ('Source', 'source'),
    ('Old Destination', 'old_destination'),
    ('New Destination', 'new_destination'),
    ('Requested By', 'requested_by'), ('Reason', 'reason'),
    ('Created At', 'created_at'), ('Finished At', 'finished_at'))


class RedirectFailed(exceptions.CommandError):
    """``--wait`` saw the redirect end in ``failed`` or ``rolled-back``."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.redirect_id = record.get('id')
        self.state = record.get('state')
        error = record.get('error') or {}
        self.code = error.get('code')
        self.reason = error.get('message')
        detail = ''
        if self.code or self.reason:
            detail = ': %s: %s' % (self.code, self.reason)
        super().__init__('redirect %s ended %s%s' % (
            self.redirect_id, self.state, detail))


class MappingColumn(columns.FormattableColumn[Any]):
    """A mapping; ``null`` stays ``null`` in JSON/YAML (DictColumn: {})."""

    def human_readable(self) -> str:
        # One ``key=value`` per line (nested keys dotted): the progress
        # mapping stays readable in a table.
        if self._value is None:
            return ''
        return '\n'.join(_flatten(self._value))

    def machine_readable(self) -> Any:
        return None if self._value is None else dict(self._value)


def _flatten(value: dict[str, Any], prefix: str = '') -> list[str]:
    lines: list[str] = []
    for key in sorted(value):
        item = value[key]
        if isinstance(item, dict) and item:
            lines.extend(_flatten(item, prefix + key + '.'))
        else:
            lines.append('%s%s=%s' % (prefix, key,
                                      '' if item is None else item))
    return lines


def dcmigrate_client(app: Any) -> rest.RedirectClient:
    """The plugin client OSC builds with :func:`..client.make_client`."""
    return app.client_manager.dcmigrate  # type: ignore[no-any-return]


def show_columns(
        record: dict[str, Any]) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    """ShowOne data of a record (unknown extra fields are shown too)."""
    names = RECORD_FIELDS + tuple(
        sorted(k for k in record if k not in RECORD_FIELDS))
    values = tuple(MappingColumn(record.get(n)) if n in DICT_FIELDS
                   else record.get(n) for n in names)
    return names, values


def resolve_server(app: Any, name_or_id: str) -> str:
    """Server UUID, looked up through Nova as OSC's own commands do.

    In noauth mode (the lab) there is usually no compute endpoint, so a
    UUID is taken as it is.
    """
    config = app.client_manager.get_configuration()
    noauth = config.get('auth_type') == 'none'
    if noauth and uuidutils.is_uuid_like(name_or_id):
        return name_or_id
    try:
        server = app.client_manager.compute.find_server(
            name_or_id, ignore_missing=False)
    except sdk_exc.ResourceNotFound:
        raise exceptions.CommandError(
            "No server with a name or ID of '%s' exists." % name_or_id
        ) from None
    except sdk_exc.DuplicateResource:
        raise exceptions.CommandError(
            "More than one server is named '%s'; use its ID." % name_or_id
        ) from None
    except (sdk_exc.SDKException, exceptions.ClientException) as exc:
        if noauth:
            raise exceptions.CommandError(
                'with --os-auth-type none give the server UUID (no '
                'compute endpoint to look up %r: %s)' % (name_or_id, exc)
            ) from None
        raise exceptions.CommandError(
            'cannot look up server %r in the compute service: %s'
            % (name_or_id, exc)) from None
    return str(server.id)


def follow(client: rest.RedirectClient, server_id: str, record: dict[str, Any],
           stream: Any) -> dict[str, Any]:
    """``--wait``: poll the record until it ends, with live progress."""
    redirect_id = str(record['id'])
    if record.get('state') in progress.TERMINAL_STATES:
        return record
    return progress.wait(lambda: client.get(server_id, redirect_id),
                         progress.make_view(stream))


def add_redirect_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        '--host', metavar='<host>',
        help='New destination compute host (default: the scheduler '
             're-picks one; never the source or the current destination)')
    parser.add_argument(
        '--reason', metavar='<text>',
        help='Why the migration is redirected (kept in the redirect '
             'record and the instance action event)')
    parser.add_argument(
        '--wait', action='store_true',
        help='Wait until the redirect ends, showing its progress on '
             'stderr; exit non-zero if it fails or is rolled back')


class CreateRedirect(command.ShowOne):
    """Redirect a server's running live migration to another host.

    The memory the old destination already holds is relayed from it, so
    the source sends only what the new destination lacks.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._failure: RedirectFailed | None = None

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument(
            'server', metavar='<server>',
            help='Server (name or ID) whose live migration is running')
        add_redirect_options(parser)
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[
            Sequence[str], Iterable[Any]]:
        client = dcmigrate_client(self.app)
        server_id = resolve_server(self.app, parsed_args.server)
        record = client.create(server_id, host=parsed_args.host,
                               reason=parsed_args.reason)
        if parsed_args.wait:
            record = follow(client, server_id, record, self.app.stderr)
            if record.get('state') in progress.FAILED_STATES:
                self._failure = RedirectFailed(record)
        return show_columns(record)

    def run(self, parsed_args: argparse.Namespace) -> int:
        # The record is printed first, then a failed --wait exits 1.
        rc: int = super().run(parsed_args)
        if self._failure is not None:
            raise self._failure
        return rc


class ListRedirect(command.Lister):
    """List the redirects of a server (running and finished), newest first."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument('server', metavar='<server>',
                            help='Server (name or ID)')
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[
            Sequence[str], Iterable[Any]]:
        client = dcmigrate_client(self.app)
        server_id = resolve_server(self.app, parsed_args.server)
        records = client.list(server_id)
        headers = tuple(h for h, _ in LIST_COLUMNS)
        rows = [tuple(r.get(f) for _, f in LIST_COLUMNS) for r in records]
        return headers, rows


class ShowRedirect(command.ShowOne):
    """Show one redirect: state, hosts, who asked and why, live progress."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument('server', metavar='<server>',
                            help='Server (name or ID)')
        parser.add_argument('redirect', metavar='<redirect>',
                            help='Redirect (ID)')
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[
            Sequence[str], Iterable[Any]]:
        client = dcmigrate_client(self.app)
        server_id = resolve_server(self.app, parsed_args.server)
        return show_columns(client.get(server_id, parsed_args.redirect))
