"""Finding a server and its running live migration through Nova's API.

python-novaclient with the caller's token (keystonemiddleware's
``keystone.token_auth`` plugin), wrapped with a service token
(keystoneauth ``ServiceTokenAuthWrapper``, ``[service_user]``) when
configured, as Nova itself calls Neutron and Cinder. Nova's policy and
project scoping therefore apply to every lookup: a server another project
owns is "not found", and only callers Nova lets list a server's
migrations (admins, by Nova's defaults) see them.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

from keystoneauth1 import exceptions as ks_exceptions
from keystoneauth1 import loading as ks_loading
from keystoneauth1 import service_token
from keystoneauth1 import session as ks_session
from novaclient import client as nova_client
from novaclient import exceptions as nova_exceptions
from oslo_config import cfg
from oslo_log import log as logging

from nova_dcmigrate.api import errors

LOG = logging.getLogger(__name__)

#: Nova's in-progress statuses (ServerMigrationsController.index).
IN_PROGRESS = ("queued", "preparing", "running", "post-migrating")


@dataclasses.dataclass(frozen=True)
class Server:
    id: str
    project_id: str


@dataclasses.dataclass(frozen=True)
class LiveMigration:
    """A server's in-progress live migration, as Nova reports it."""

    uuid: str
    status: str
    source: str
    dest: str


class NovaLookup:
    """Looks servers and migrations up with the caller's credentials."""

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        self.conf = conf
        self._service_auth: Any = None

    def _session(self, user_auth: Any) -> ks_session.Session:
        auth = user_auth
        group = self.conf.service_user
        if group.send_service_user_token:
            if self._service_auth is None:
                self._service_auth = ks_loading.load_auth_from_conf_options(
                    self.conf, "service_user")
            auth = service_token.ServiceTokenAuthWrapper(
                user_auth=user_auth, service_auth=self._service_auth)
        return ks_loading.load_session_from_conf_options(
            self.conf, "nova", auth=auth)

    def client(self, user_auth: Any) -> Any:
        group = self.conf.nova
        return nova_client.Client(
            self.conf.api.nova_microversion,
            session=self._session(user_auth),
            endpoint_override=group.endpoint_override,
            region_name=group.region_name,
            endpoint_type=(group.valid_interfaces or ["public"])[0],
            service_name=group.service_name)

    def get_server(self, nova: Any, server_id: str) -> Server:
        """:raises ServerNotFound: Nova does not show it to the caller."""
        with _nova_errors(server_id):
            server = nova.servers.get(server_id)
        return Server(server.id, str(getattr(server, "tenant_id", "")))

    def live_migration(self, nova: Any, server_id: str
                       ) -> LiveMigration | None:
        """The server's in-progress live migration, or None.

        :raises Forbidden: Nova's policy does not let the caller list the
            server's migrations.
        """
        with _nova_errors(server_id):
            migrations = nova.server_migrations.list(server_id)
        for mig in migrations:
            if mig.status in IN_PROGRESS:
                return LiveMigration(uuid=mig.uuid, status=mig.status,
                                     source=mig.source_compute,
                                     dest=mig.dest_compute)
        return None


@contextlib.contextmanager
def _nova_errors(server_id: str) -> Iterator[None]:
    """Nova's answers as API errors."""
    try:
        yield
    except errors.ApiError:
        raise
    except nova_exceptions.NotFound as exc:
        raise errors.ServerNotFound(server=server_id) from exc
    except nova_exceptions.Forbidden as exc:
        raise errors.Forbidden(
            action="this request (Nova refused: %s)" % exc) from exc
    except nova_exceptions.Unauthorized as exc:
        raise errors.Unauthorized(reason="Nova refused the token") from exc
    except (nova_exceptions.ClientException,
            ks_exceptions.ClientException) as exc:
        LOG.warning("Nova lookup of server %(server)s failed: %(err)s",
                    {"server": server_id, "err": exc})
        raise errors.NovaUnavailable(reason=str(exc)) from exc
