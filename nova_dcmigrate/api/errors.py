"""HTTP errors of the redirect API and how other errors map to them.

Every error leaves the service as
``{"error": {"code": <status>, "title": <reason phrase>, "message": ...}}``.
Errors from the source compute are mapped by class (never by message
text): rebuilt ``RedirectError`` subclasses when the transport allows our
exception modules, else the class name oslo.messaging's ``RemoteError``
carries.
"""

from __future__ import annotations

import http
from typing import Any

from nova_dcmigrate.compute import exception as redirect_exception
from nova_dcmigrate import exception


class ApiError(exception.DcmigrateError):
    """An error answered with ``status``."""

    status = 503
    msg_fmt = "%(reason)s"

    @property
    def title(self) -> str:
        return http.HTTPStatus(self.status).phrase

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.status, "title": self.title,
                          "message": self.message}}


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401
    msg_fmt = "Authentication required: %(reason)s"


class Forbidden(ApiError):
    status = 403
    msg_fmt = "Policy does not allow %(action)s."


class NotFound(ApiError):
    status = 404


class ServerNotFound(NotFound):
    msg_fmt = "Server %(server)s could not be found."


class NoLiveMigration(NotFound):
    msg_fmt = "Server %(server)s has no live migration in progress."


class RedirectNotFound(NotFound):
    msg_fmt = "Server %(server)s has no redirect %(redirect)s."


class MethodNotAllowed(ApiError):
    status = 405


class Conflict(ApiError):
    status = 409


class ServiceUnavailable(ApiError):
    status = 503


class ComputeUnreachable(ServiceUnavailable):
    msg_fmt = ("The source compute %(host)s of server %(server)s did not "
               "answer: %(reason)s")


class NovaUnavailable(ServiceUnavailable):
    msg_fmt = "Nova's compute API could not be reached: %(reason)s"


#: Refusals of the source compute, by class name, and their status.
_REDIRECT_STATUS: dict[str, type[ApiError]] = {
    "InvalidRedirectTarget": BadRequest,
    "UnknownLiveMigration": NotFound,
    "UnknownMigration": Conflict,
    "NotLiveMigration": NotFound,
    "MigrationNotRunning": Conflict,
    "PostCopyMigration": Conflict,
    "SwitchingOver": Conflict,
    "RedirectInProgress": Conflict,
    "RedirectPreparationFailed": Conflict,
    "NoValidRedirectTarget": Conflict,
    "RedirectError": Conflict,
}


def from_compute(err: BaseException) -> ApiError | None:
    """The API error for a refusal of the source compute, or None.

    :param err: a rebuilt ``RedirectError`` (or scheduler error), or an
        ``oslo_messaging.RemoteError`` naming one in ``exc_type``.
    """
    if isinstance(err, redirect_exception.RedirectError) or (
            type(err).__name__ in _REDIRECT_STATUS):
        name = type(err).__name__
        message = str(err)
    else:
        name = getattr(err, "exc_type", None) or ""
        message = str(getattr(err, "value", None) or err)
        if name not in _REDIRECT_STATUS:
            return None
    for cls in type(err).__mro__:
        if cls.__name__ in _REDIRECT_STATUS:
            name = cls.__name__
            break
    return _REDIRECT_STATUS[name](reason=message)


def unexpected(err: BaseException, request_id: str | None) -> ApiError:
    """The answer to an error nothing expected: never a 500 with a
    traceback, but a 503 naming the error class and the request id to
    find it in the logs."""
    return ServiceUnavailable(
        reason="The redirect API failed unexpectedly (%s); see the "
               "dcmigrate-api log for request %s."
               % (type(err).__name__, request_id or "(no request id)"))
