"""Errors of the agent layer (peer connections, sessions, page store)."""

from __future__ import annotations

from nova_dcmigrate.exception import DcmigrateError


class AgentError(DcmigrateError):
    msg_fmt = "Agent error in migration %(migration_id)s: %(reason)s"


class PeerAuthError(AgentError):
    msg_fmt = "Peer %(peer)s failed authentication: %(reason)s"


class PeerConnectError(AgentError):
    msg_fmt = "Cannot connect to %(peer)s: %(reason)s"


class PeerProtocolError(AgentError):
    msg_fmt = "Protocol error with peer %(peer)s: %(reason)s"


class PeerClosed(PeerProtocolError):
    msg_fmt = "Peer %(peer)s closed the connection: %(reason)s"


class UnknownMigration(AgentError):
    msg_fmt = "No migration session %(migration_id)s on this agent."


class SessionExists(AgentError):
    msg_fmt = "Migration session %(migration_id)s already exists."


class SessionFailed(AgentError):
    msg_fmt = "Migration %(migration_id)s failed: %(reason)s"


class PeerAborted(SessionFailed):
    """The peer agent's session was aborted on request (ABORT frame): the
    attempt was stopped on purpose, e.g. for a redirect."""


class InvalidRequest(AgentError):
    msg_fmt = "Invalid request for migration %(migration_id)s: %(reason)s"


class PortUnavailable(InvalidRequest):
    """The source agent cannot listen on the loopback port asked for
    (taken): the caller tries another one."""

    msg_fmt = ("Migration %(migration_id)s: cannot listen on "
               "%(address)s:%(port)d: %(reason)s")
