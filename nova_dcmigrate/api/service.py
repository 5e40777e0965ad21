"""What each redirect API request does, without HTTP.

Order of every request: find the server through Nova with the caller's
credentials (404 if Nova does not show it), check our policy against the
server's project (403), then talk to the source compute. Records the
source returns are stored (:mod:`.store`) before they are answered.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from oslo_context import context as oslo_context
from oslo_log import log as logging
import oslo_messaging as messaging
from oslo_policy import policy

from nova_dcmigrate.api import compute_rpc
from nova_dcmigrate.api import errors
from nova_dcmigrate.api import nova as nova_api
from nova_dcmigrate.api import store as record_store
from nova_dcmigrate.compute import records
from nova_dcmigrate.policies import redirect as redirect_policy

LOG = logging.getLogger(__name__)

#: Failures of the bus or of the source compute to answer.
_UNREACHABLE = (messaging.MessagingTimeout, messaging.MessageDeliveryFailure,
                messaging.MessagingException)


@dataclasses.dataclass
class Caller:
    """Who asks: the request context and the credentials to reach Nova
    with (keystonemiddleware's user plugin, or a plain token)."""

    context: oslo_context.RequestContext
    auth: Any


class RedirectService:
    def __init__(self, lookup: nova_api.NovaLookup,
                 compute: compute_rpc.ComputeClient,
                 store: record_store.RecordStore,
                 enforcer: policy.Enforcer) -> None:
        self.lookup = lookup
        self.compute = compute
        self.store = store
        self.enforcer = enforcer

    # -- helpers ---------------------------------------------------------

    def _authorize(self, caller: Caller, action: str,
                   server: nova_api.Server) -> None:
        target = {"project_id": server.project_id}
        try:
            self.enforcer.authorize(action, target, caller.context,
                                    do_raise=True)
        except (policy.PolicyNotAuthorized, policy.InvalidScope) as err:
            raise errors.Forbidden(action=action) from err

    def _server(self, caller: Caller, server_id: str,
                action: str) -> tuple[Any, nova_api.Server]:
        nova = self.lookup.client(caller.auth)
        server = self.lookup.get_server(nova, server_id)
        self._authorize(caller, action, server)
        return nova, server

    def _call(self, source: str, server_id: str, fn: Any,
              *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except errors.ApiError:
            raise
        except Exception as err:
            mapped = errors.from_compute(err)
            if mapped is not None:
                raise mapped from err
            if isinstance(err, messaging.RemoteError):
                raise errors.ServiceUnavailable(
                    reason="The source compute %s failed: %s: %s"
                           % (source, err.exc_type, err.value)) from err
            if isinstance(err, _UNREACHABLE):
                raise errors.ComputeUnreachable(
                    host=source, server=server_id,
                    reason=str(err) or type(err).__name__) from err
            raise

    def _refresh(self, caller: Caller, nova: Any, server_id: str) -> None:
        """Store what the sources know of the server's redirects now."""
        try:
            migration = self.lookup.live_migration(nova, server_id)
        except errors.Forbidden:
            # Nova shows in-progress migrations to admins only (by
            # default): readers get the records stored here, refreshed
            # from the sources already known.
            migration = None
        sources = self.store.sources(server_id)
        if migration is not None:
            sources = [migration.source] + [
                s for s in sources if s != migration.source]
        for source in sources:
            try:
                found = self._call(source, server_id, self.compute.list,
                                   caller.context, source, server_id)
            except errors.ComputeUnreachable:
                if migration is not None and source == migration.source:
                    raise
                LOG.warning("Source %(host)s of earlier redirects of "
                            "server %(server)s does not answer; listing "
                            "what is stored", {"host": source,
                                               "server": server_id})
                continue
            self.store.save(found)

    # -- the three requests ------------------------------------------------

    def create(self, caller: Caller, server_id: str, host: str | None,
               reason: str | None) -> dict[str, Any]:
        """Redirect the server's running live migration; its record."""
        nova, server = self._server(caller, server_id,
                                    redirect_policy.CREATE)
        migration = self.lookup.live_migration(nova, server.id)
        if migration is None:
            raise errors.NoLiveMigration(server=server.id)
        if host is not None and host in (migration.source, migration.dest):
            which = ("the source" if host == migration.source
                     else "the current destination")
            raise errors.BadRequest(
                reason="Host %s is %s of the live migration of server %s."
                       % (host, which, server.id))
        record = self._call(
            migration.source, server.id, self.compute.redirect,
            caller.context, migration.source, server.id, migration.uuid,
            host, reason, records.user_requester(caller.context.user_id))
        self.store.save([record])
        LOG.info("Redirect %(id)s of server %(server)s requested by "
                 "%(by)s", {"id": record["id"], "server": server.id,
                            "by": record["requested_by"]})
        return dict(record)

    def list(self, caller: Caller, server_id: str) -> list[dict[str, Any]]:
        nova, server = self._server(caller, server_id, redirect_policy.LIST)
        self._refresh(caller, nova, server.id)
        return self.store.list_server(server.id)

    def show(self, caller: Caller, server_id: str,
             redirect_id: str) -> dict[str, Any]:
        nova, server = self._server(caller, server_id, redirect_policy.SHOW)
        self._refresh(caller, nova, server.id)
        record = self.store.get(server.id, redirect_id)
        if record is None:
            raise errors.RedirectNotFound(server=server.id,
                                          redirect=redirect_id)
        return record
