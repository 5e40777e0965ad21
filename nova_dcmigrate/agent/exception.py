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


class VersionMismatch(PeerProtocolError):
    msg_fmt = ("Peer %(peer)s speaks agent protocol versions %(theirs)s, "
               "this agent %(ours)s: no common version.")


class SecretMismatch(InvalidRequest):
    msg_fmt = ("Migration %(migration_id)s is already prepared here with "
               "another secret; refusing the second prepare.")


class LocalSocketError(AgentError):
    msg_fmt = ("Migration %(migration_id)s: local migration socket "
               "%(path)s: %(reason)s")


class TLSConfigError(AgentError):
    msg_fmt = "Agent peer TLS is misconfigured: %(reason)s"


class BackingUnavailable(AgentError):
    msg_fmt = ("Cannot hold the guest RAM of QEMU pid %(pid)s: %(reason)s")


class RamLayoutTooLarge(AgentError):
    msg_fmt = ("Migration %(migration_id)s: the stream announces RAM blocks "
               "of %(announced)d bytes in all (largest %(block)s, "
               "%(largest)d bytes), more than the %(limit)d bytes the "
               "domain may have; nothing was allocated")


class HeldPageChanged(AgentError):
    msg_fmt = ("Migration %(migration_id)s: held page %(page)d of RAM block "
               "%(block)s no longer has the content this agent announced")
