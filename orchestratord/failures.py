"""Any exception a route raises, as a member of the one error tree (NERVE-4030).

The app renders the result as the flat envelope; the OpenAI façade renders the same
error in OpenAI's shape (OAI-6005). Both translate framework exceptions here, so a
Litestar 404, 405, 413 or validation failure means the same error on every route.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    ValidationException,
)

from contracts.errors import Internal, InvalidParams, NotFound, OrchestratorError

__all__ = ["MethodNotAllowed", "as_orchestrator_error"]

log = logging.getLogger("orchestratord")


class MethodNotAllowed(InvalidParams):
    """The route exists but not for this HTTP method (405)."""

    http_status = 405


def _invalid_request(exc: ValidationException) -> OrchestratorError:
    """A body, path or query that failed its type: ``data.errors`` lists the validator's
    problems and ``data.field`` names the first one's key (the house rule that a
    refusal names its field)."""
    detail = exc.extra if isinstance(exc.extra, list | dict) else None
    data: dict[str, object] | None = {"errors": detail} if detail else None
    first = detail[0] if isinstance(detail, list) and detail else None
    if data is not None and isinstance(first, dict) and isinstance(first.get("key"), str):
        data["field"] = first["key"]
    return InvalidParams(f"invalid request: {exc.detail}", data=data)


def as_orchestrator_error(
        exc: Exception, *,
        invalid: Callable[[ValidationException], OrchestratorError] = _invalid_request,
) -> OrchestratorError:
    """The error-tree member for ``exc``.

    Args:
        exc: what a route, guard or the framework raised.
        invalid: builds the error of a body that failed validation (default: 400
            ``INVALID_PARAMS`` with the validator's problems in ``data.errors``).

    Returns:
        ``exc`` itself when it is an :class:`OrchestratorError`; ``NOT_FOUND`` (404),
        405, or ``INVALID_PARAMS`` with the framework's 4xx status (413 becomes 400) for
        framework exceptions; otherwise ``INTERNAL`` (500), after logging the traceback.
    """
    if isinstance(exc, OrchestratorError):
        return exc
    if isinstance(exc, ValidationException):
        return invalid(exc)
    if isinstance(exc, NotFoundException):
        return NotFound(exc.detail or "not found")
    if isinstance(exc, MethodNotAllowedException):
        return MethodNotAllowed(exc.detail or "method not allowed")
    if isinstance(exc, HTTPException) and exc.status_code < 500:
        err = InvalidParams(f"{exc.detail}")
        err.http_status = exc.status_code if exc.status_code != 413 else 400  # type: ignore[misc]
        return err
    log.exception("unhandled error", exc_info=exc)
    return Internal("internal error; see the server log with this X-Correlation-Id")
