"""Bearer-token authentication and tenancy at the HTTP edge.

Each configured token belongs to one tenant (``auth_tokens: {token: tenant}``). Tokens
are compared in constant time against every configured token. With no tokens configured
the server is single-tenant (``default``) and may only listen on a loopback address.
Another tenant's flows, runs and steps answer 404, never 403, so existence does not leak.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.handlers.base import BaseRouteHandler

from contracts.errors import Unauthorized
from orchestrator_core.config import ServerConfig
from orchestrator_core.service import DEFAULT_TENANT, Orchestrator
from orchestratord.tickets import StreamTickets

__all__ = ["check_bind", "require_token", "tenant_of"]


def check_bind(config: ServerConfig) -> str | None:
    """Why the server must not start with this config, or None.

    Binding to a non-loopback address without bearer tokens is refused.
    """
    if config.auth_tokens:
        return None
    host = config.host
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return None
    return (f"refusing to listen on {host!r} without authentication: configure "
            "auth_tokens ({token: tenant}) or bind to 127.0.0.1")


def _match(tokens: dict[str, str], presented: str) -> str | None:
    """The tenant of ``presented``; every configured token is compared, in constant time."""
    found = None
    given = presented.encode()
    for token, tenant in tokens.items():
        if hmac.compare_digest(token.encode(), given):
            found = tenant
    return found


async def require_token(connection: ASGIConnection[Any, Any, Any, Any],
                        handler: BaseRouteHandler) -> None:
    """Guard: resolve the tenant from ``Authorization: Bearer <token>``.

    It is ``async`` on purpose, though it never awaits: Litestar runs a plain function
    guard in a worker thread, a thread hop on every request (about 0.1 ms of latency).

    A route with ``opt={"ticket": True}`` (the Step stream and the run stream) also
    accepts, when there is no valid bearer token, a ``ticket`` query parameter issued
    for its ``step_id`` or ``run_id`` (NERVE-4054).

    Raises:
        Unauthorized: tokens are configured and the request has none, or a wrong one
            (a missing, expired or other-step ticket alike).
    """
    orch = connection.app.state.orch
    config: ServerConfig = orch.config
    if not config.auth_tokens or handler.opt.get("public"):
        connection.state.tenant = DEFAULT_TENANT
        return
    scheme, _, presented = connection.headers.get("authorization", "").partition(" ")
    tenant = _match(config.auth_tokens, presented.strip()) if scheme.lower() == "bearer" \
        else None
    ticket = connection.query_params.get("ticket") if handler.opt.get("ticket") else None
    if tenant is None and ticket is not None:
        tickets: StreamTickets = connection.app.state.stream_tickets
        params = connection.path_params  # ids are prefixed: a Step's never names a Run
        subject = str(params.get("step_id") or params.get("run_id") or "")
        tenant = tickets.tenant_of(ticket, subject, config.auth_tokens.values(),
                                   orch.clock.monotonic())
    if tenant is None:
        raise Unauthorized("a valid bearer token is required")
    connection.state.tenant = tenant


def tenant_of(request: ASGIConnection[Any, Any, Any, Any],
              orch: NamedDependency[Orchestrator]) -> str:
    """Dependency: the tenant the guard resolved.

    It takes ``orch`` (and does not use it) so that Litestar resolves it after ``orch``,
    inline: two dependencies of the same depth are resolved concurrently, in an anyio
    task group whose two tasks cost a pass of the event loop and about 30 µs of CPU per
    request (STREAM-2015).

    Args:
        request: the connection the guard (:func:`require_token`) has seen.
        orch: the orchestrator dependency, only to order the resolution.

    Returns:
        The caller's tenant (``default`` when the server has no bearer tokens).
    """
    del orch
    return str(getattr(request.state, "tenant", DEFAULT_TENANT))
