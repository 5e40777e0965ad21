"""``openstack server migrate --redirect``: the form operators type.

A cliff ``CommandHook`` in the group ``openstack.cli.server_migrate`` adds
only ``--redirect``; ``--host``, ``--wait`` and ``<server>`` are OSC's own
(re-adding ``--host`` would break the command: cliff drops an option whose
names all conflict with an error).  cliff always runs the stock
``take_action`` after the hooks' ``before()``, and that would start a new
migration (Nova answers 409 while one runs), so with ``--redirect`` the
hook does the redirect in ``before()`` and ends the command with
``cliff.help.HelpExit``: cliff's ``App.run_subcommand`` treats it as a
finished command with exit status 0 (cliff is pinned, see
constraints.txt; ``tests/unit/osc/test_hooks.py`` checks that contract).
Without ``--redirect`` the hook returns the arguments untouched.
"""

from __future__ import annotations

import argparse
from typing import Any

from cliff import help as cliff_help
from cliff import hooks
from osc_lib import exceptions

from nova_dcmigrate.osc import progress
from nova_dcmigrate.osc.v1 import redirect

#: Options of the stock command that describe a *new* migration: they make
#: no sense with --redirect (dest, default, option string).
NEW_MIGRATION_OPTIONS = (
    ('block_migration', None, '--block-migration/--shared-migration'),
    ('disk_overcommit', None, '--disk-overcommit/--no-disk-overcommit'),
)


class RedirectMigrationHook(hooks.CommandHook):
    """Adds ``--redirect`` to ``openstack server migrate``."""

    def get_parser(
            self, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument(
            '--redirect', action='store_true', default=False,
            help='Redirect the server\'s running live migration instead of '
                 'starting one: to --host, or to a host the scheduler '
                 're-picks (dcmigrate; --wait follows its progress)')
        return parser

    def get_epilog(self) -> str:
        return ''

    def before(self, parsed_args: argparse.Namespace) -> argparse.Namespace:
        if not getattr(parsed_args, 'redirect', False):
            return parsed_args
        for dest, default, option in NEW_MIGRATION_OPTIONS:
            if getattr(parsed_args, dest, default) is not default:
                raise exceptions.CommandError(
                    '%s cannot be used with --redirect (it describes a new '
                    'migration; --redirect changes the running one)'
                    % option)
        app: Any = self.cmd.app
        client = redirect.dcmigrate_client(app)
        server_id = redirect.resolve_server(app, parsed_args.server)
        record = client.create(server_id, host=parsed_args.host)
        app.stdout.write(progress.describe(record) + '\n')
        if getattr(parsed_args, 'wait', False):
            record = redirect.follow(client, server_id, record, app.stderr)
            if record.get('state') in progress.FAILED_STATES:
                raise redirect.RedirectFailed(record)
            app.stdout.write(progress.describe(record) + '\n')
        app.stdout.flush()
        # Documented early exit: the stock migrate must not run now.
        raise cliff_help.HelpExit()

    def after(self, parsed_args: argparse.Namespace, return_code: int) -> int:
        return return_code
