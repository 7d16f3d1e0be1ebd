"""The /v1 API's errors: :class:`ApiError` (a status, a code, a one-line message), what each Balsam exception
becomes on the wire (:func:`error_for`), and the one shape every error answer has (:func:`error_payload`)::

    {"error": {"code": "not_found", "message": "...", "field": null, "kind": "ObjectDoesNotExist"}}

``kind`` is the exception's class name, so a client raises the same class the server did. Imported by the app
(:mod:`balsam.http.server`) and by the connection layer (:mod:`balsam.http.serve`), which answers some
connections before any request reaches the app; it needs neither Starlette nor uvicorn.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from balsam import exceptions as exc


class ApiError(Exception):
    """An error answer with its status and code."""

    def __init__(self, status: int, code: str, message: str, field: Optional[str] = None, kind: str = "",
                 command: Optional[int] = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.kind = kind
        self.command = command
        """The queued command of a 202 (a write the relay keeps for its site): the provisional handle."""


def error_for(error: BaseException) -> ApiError:
    """The API error of a Balsam exception (its class name travels, so clients raise the same class)."""
    if isinstance(error, UnicodeEncodeError):  # text SQLite cannot take, as the home host's store says it
        from balsam.db.connection import not_unicode

        error = not_unicode(error)
    kind = type(error).__name__
    message = str(error).splitlines()[0] if str(error) else kind
    if isinstance(error, ApiError):
        return error
    if isinstance(error, exc.StaleVersion):
        return ApiError(409, "conflict", message, kind=kind)
    if isinstance(error, exc.CommandPending):
        return ApiError(202, "pending", message, kind=kind, command=error.command_id)
    if isinstance(error, exc.ObjectDoesNotExist):
        return ApiError(404, "not_found", message, kind="ObjectDoesNotExist")
    if isinstance(error, exc.IllegalTransition):
        return ApiError(409, "illegal_transition", message, kind=kind)
    if isinstance(error, exc.JobLockedError):
        return ApiError(409, "locked", message, kind=kind)
    if isinstance(error, exc.SessionExpired):
        return ApiError(409, "session_expired", message, kind=kind)
    if isinstance(error, exc.ValidationError):
        return ApiError(400, "invalid", message, field=getattr(error, "field", None), kind="ValidationError" if kind == "FieldError" else kind)
    if isinstance(error, exc.AppError):
        return ApiError(400, "invalid", message, kind=kind)
    if isinstance(error, exc.ServiceError):
        return ApiError(401, "unauthorized", message, kind=kind)
    if isinstance(error, exc.StoreError):
        return ApiError(503, "unavailable", f"the site DB is busy or unusable: {message}", kind=kind)
    if isinstance(error, exc.BalsamError):
        return ApiError(400, "invalid", message, kind=kind)
    return ApiError(503, "unavailable", "the server failed to answer; try again (see the agent's log)", kind="ServiceError")


def error_payload(error: ApiError) -> Dict[str, Any]:
    """The documented error shape of ``error`` (with the queued command of a 202)."""
    payload: Dict[str, Any] = {"error": {"code": error.code, "message": error.message, "field": error.field, "kind": error.kind or None}}
    if error.command is not None:
        payload["error"]["command"] = error.command
    return payload
