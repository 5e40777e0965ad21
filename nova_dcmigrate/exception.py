"""Root of nova-dcmigrate's exception tree.

Every error the project raises derives from :class:`DcmigrateError`.  Errors
carry their data as keyword arguments (kept in ``self.kwargs``) so that
oslo.messaging can rebuild them on the far side of an RPC call, and so tests
can assert on data instead of on message text.  No HTTP status lives here:
the API layer maps errors to HTTP.

::

    DcmigrateError
     +-- StreamError                 (stream/exception.py: codec errors)
     +-- AgentError                  (agent/exception.py)
     |    +-- PeerAuthError
     |    +-- PeerConnectError
     |    +-- PeerProtocolError
     |    +-- UnknownMigration
     +-- MigrationStateError
     +-- LabError                    (lab/exception.py)
"""

from __future__ import annotations

from typing import Any


class DcmigrateError(Exception):
    """Base class: formats ``msg_fmt`` with the constructor's kwargs."""

    msg_fmt = "An unknown nova-dcmigrate error occurred."

    def __init__(self, message: str | None = None, **kwargs: Any) -> None:
        self.kwargs = kwargs
        if message is None:
            template = self._template()
            try:
                message = template % kwargs
            except (KeyError, TypeError, ValueError):
                # A formatting bug must not hide the original failure.
                message = template
        self.message = message
        super().__init__(message)

    def _template(self) -> str:
        """The format of the message for ``self.kwargs``; a subclass whose
        text depends on the data picks among its formats here."""
        return self.msg_fmt

    def __getattr__(self, name: str) -> Any:
        # Expose kwargs as attributes (err.offset, err.block, ...).
        kwargs = self.__dict__.get("kwargs", {})
        if name in kwargs:
            return kwargs[name]
        raise AttributeError(name)


class MigrationStateError(DcmigrateError):
    """An operation was attempted in a state that does not allow it."""

    msg_fmt = ("Migration %(migration_id)s is in state %(state)s; "
               "%(operation)s requires %(required)s.")
