"""Fake Nova and fake source compute for the API's unit tests.

Unit level only: Nova's API and the compute RPC cannot run without Nova
(``tests/functional/nova/test_api.py`` runs the same app against Nova's
in-process harness). The fakes answer as python-novaclient and
oslo.messaging do: novaclient exceptions, RedirectError subclasses,
``RemoteError``, ``MessagingTimeout``. Everything else is real: Flask,
oslo.middleware, oslo.policy with the default rules, jsonschema, the
sqlite record store, and (for keystone mode) keystonemiddleware with its
``AuthTokenFixture``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from novaclient import exceptions as nova_exceptions

from nova_dcmigrate.api import nova as nova_api
from nova_dcmigrate.compute import records

SERVER = "7d0d9bd6-9f4e-4a0f-8f4d-3d3c0c6a2a01"
OTHER_SERVER = "0e7cdd1a-cc0b-4b88-8c4c-41b7a93b7c02"
MIGRATION = "5b0c8f5e-3c2a-4f58-9b0f-6a7d0e1f2a03"
PROJECT = "project-a"
OTHER_PROJECT = "project-b"


@dataclasses.dataclass
class Migration:
    uuid: str
    status: str
    source_compute: str
    dest_compute: str


@dataclasses.dataclass
class Server:
    id: str
    tenant_id: str


class FakeNova:
    """What the API's novaclient sees; ``token`` is ``project:role``."""

    def __init__(self, world: World, token: str) -> None:
        self.world = world
        self.project, _, self.role = token.partition(":")
        self.servers = self
        self.server_migrations = _Migrations(self)

    def get(self, server_id: str) -> Server:
        self.world.calls.append(("servers.get", server_id))
        if self.world.nova_down:
            raise nova_exceptions.ClientException(503, "nova is down")
        server = self.world.servers.get(server_id)
        if server is None or (self.world.scoped and self.role != "admin"
                              and server.tenant_id != self.project):
            raise nova_exceptions.NotFound(404)
        return server


class _Migrations:
    def __init__(self, nova: FakeNova) -> None:
        self.nova = nova

    def list(self, server_id: str) -> list[Migration]:
        # Nova's default policy: only admins list a server's migrations.
        if self.nova.role != "admin":
            raise nova_exceptions.Forbidden(403)
        return list(self.nova.world.migrations.get(server_id, []))


class World:
    """The fake cloud shared by the fakes of one test."""

    def __init__(self) -> None:
        self.servers = {SERVER: Server(SERVER, PROJECT),
                        OTHER_SERVER: Server(OTHER_SERVER, PROJECT)}
        self.migrations = {SERVER: [Migration(MIGRATION, "running", "src",
                                              "dest1")]}
        #: Nova hides servers of other projects from non-admins.
        self.scoped = True
        self.nova_down = False
        self.calls: list[tuple[str, Any]] = []


class FakeLookup(nova_api.NovaLookup):
    def __init__(self, conf: Any, world: World) -> None:
        super().__init__(conf)
        self.world = world

    def client(self, user_auth: Any) -> FakeNova:
        # noauth: a plain token; keystone: the caller's AccessInfo.
        ref = getattr(user_auth, "auth_ref", None)
        token = ref.auth_token if ref is not None else user_auth.token
        return FakeNova(self.world, token)


class FakeCompute:
    """The source compute's ``dcmigrate_compute`` endpoint."""

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.calls: list[tuple[str, Any]] = []
        self.records: dict[str, list[dict[str, Any]]] = {}

    def redirect(self, ctxt: Any, source: str, server_id: str,
                 migration_id: str, host: str | None, reason: str | None,
                 requested_by: str) -> dict[str, Any]:
        self.calls.append(("redirect", (source, server_id, migration_id,
                                        host, reason, requested_by)))
        if self.error is not None:
            raise self.error
        rec = records.RedirectRecord(
            server_id=server_id, migration_id=migration_id, source=source,
            old_destination="dest1", new_destination=host,
            requested_by=requested_by, reason=reason).to_dict()
        self.records.setdefault(source, []).insert(0, rec)
        return rec

    def list(self, ctxt: Any, source: str,
             server_id: str) -> list[dict[str, Any]]:
        self.calls.append(("list", (source, server_id)))
        if self.error is not None:
            raise self.error
        return [r for r in self.records.get(source, [])
                if r["server_id"] == server_id]
