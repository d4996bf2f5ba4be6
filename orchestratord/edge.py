"""The HTTP edge's defences: who may talk to the server, and what a JSON body may be.

Two pieces, both before any domain code runs (SEC-6000..SEC-6003):

* :class:`EdgeGuard`, an ASGI middleware in front of every route (unknown routes and
  SSE included). In no-auth mode (no ``auth_tokens``) it answers only requests whose
  ``Host`` names a loopback address (or one of ``allowed_hosts``): a guard against DNS
  rebinding, where a web page's own host name resolves to 127.0.0.1. It also refuses a
  state-changing request (``POST``, ``PUT``, ``PATCH``, ``DELETE``) that carries an
  ``Origin`` other than the server's own host or one of ``allowed_origins``: browsers
  send ``Origin`` on every cross-site POST, and a no-auth server has no other way to
  tell a web page from a local client. With bearer tokens neither check applies: a
  browser cannot attach the token to a cross-site request without a CORS preflight.
* :class:`JsonRequest`, the request class whose :meth:`~JsonRequest.json` is the only
  JSON body parser. It requires ``Content-Type: application/json`` (415
  ``UNSUPPORTED_MEDIA_TYPE``: a ``text/plain`` POST is what a browser sends cross-site
  without a preflight), and turns every malformed body into a typed 400 naming the
  problem: invalid UTF-8, a syntax error, nesting deeper than ``max_json_depth``, a
  number out of range, or an integer outside the signed 64-bit range (nothing in the
  contract needs more, and SQLite cannot store it).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

import msgspec
import re2
from litestar import Request
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Empty, Receive, Scope, Send

from contracts.errors import (
    InvalidParams,
    OrchestratorError,
    OriginNotAllowed,
    UnsupportedMediaType,
)

__all__ = ["DEFAULT_MAX_JSON_DEPTH", "EdgeGuard", "JsonRequest", "check_json_value",
           "host_is_allowed"]

DEFAULT_MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects a request body may have (SEC-6002)."""
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_LONG_DIGITS = re2.compile(rb"[0-9]{19}")
"""An integer literal of 19 or more digits may leave the int64 range; shorter never."""
_UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_enc = msgspec.json.Encoder()


def _host_name(value: str) -> str:
    """The host part of a ``Host`` header or an origin's authority, lower-cased."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def host_is_allowed(host_header: str, allowed_hosts: Sequence[str] = ()) -> bool:
    """Whether a ``Host`` header names a loopback address or an allowed host (SEC-6000).

    Args:
        host_header: the raw ``Host`` value (``name[:port]``, ``[v6][:port]``).
        allowed_hosts: extra host names the operator accepts (no ports).

    Returns:
        True for ``localhost``, ``*.localhost``, any loopback IP, or a listed name.
    """
    name = _host_name(host_header)
    if name in {h.lower() for h in allowed_hosts}:
        return True
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _origin_authority(origin: str) -> str | None:
    scheme, sep, rest = origin.partition("://")
    if not sep or scheme not in ("http", "https"):
        return None
    return rest.split("/", 1)[0].lower()


class EdgeGuard:
    """ASGI middleware: the DNS-rebinding and cross-site guards of a no-auth server.

    Args:
        app: the application it protects.
        no_auth: True when the server has no bearer tokens (the guards apply only then).
        allowed_hosts: extra ``Host`` names accepted besides loopback ones.
        allowed_origins: origins (``scheme://host[:port]``) allowed to send
            state-changing requests besides the server's own.
    """

    def __init__(self, app: ASGIApp, *, no_auth: bool, allowed_hosts: Sequence[str] = (),
                 allowed_origins: Sequence[str] = ()) -> None:
        self.app = app
        self.no_auth = no_auth
        self.allowed_hosts = tuple(allowed_hosts)
        self.allowed_origins = frozenset(o.rstrip("/").lower() for o in allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse, or pass the request on unchanged."""
        if self.no_auth and scope["type"] == ScopeType.HTTP:
            refusal = self._refusal(scope)
            if refusal is not None:
                await self._answer(refusal, send)
                return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope) -> OrchestratorError | None:
        host = origin = None
        for name, value in scope["headers"]:
            if name == b"host":
                host = value.decode("latin-1")
            elif name == b"origin":
                origin = value.decode("latin-1")
        if host is None or not host_is_allowed(host, self.allowed_hosts):
            return OriginNotAllowed(
                "this server has no authentication and answers only requests addressed "
                "to a loopback host name; configure auth_tokens or allowed_hosts",
                data={"header": "Host", "value": (host or "")[:256]})
        if origin is None or scope.get("method") not in _UNSAFE_METHODS:
            return None
        authority = _origin_authority(origin)
        if origin.rstrip("/").lower() in self.allowed_origins or (
                authority is not None and authority == host.strip().lower()):
            return None
        return OriginNotAllowed(
            "cross-origin requests may not change state on a server without "
            "authentication; configure auth_tokens or allowed_origins",
            data={"header": "Origin", "value": origin[:256]})

    @staticmethod
    async def _answer(err: OrchestratorError, send: Send) -> None:
        body = _enc.encode(err.envelope())
        await send({"type": "http.response.start", "status": err.http_status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body, "more_body": False})


def check_json_value(value: Any, max_depth: int) -> None:
    """Refuse a decoded JSON value nested deeper than ``max_depth`` or holding an integer
    outside the signed 64-bit range (SEC-6002). Iterative: no recursion to exhaust.

    Raises:
        InvalidParams: ``data = {"field": "body", "reason": "too_deep" | "integer_range",
            "path": <JSON path of the first offender>}``.
    """
    stack: list[tuple[Any, int, str]] = [(value, 0, "$")]
    while stack:
        node, depth, path = stack.pop()
        if isinstance(node, dict):
            items: Any = node.items()
        elif isinstance(node, list):
            items = enumerate(node)
        else:
            if isinstance(node, int) and not isinstance(node, bool) and \
                    not _INT64_MIN <= node <= _INT64_MAX:
                raise InvalidParams("an integer in the body is outside the signed 64-bit "
                                    "range", data={"field": "body", "reason": "integer_range",
                                                   "path": path})
            continue
        if depth >= max_depth:
            raise InvalidParams(f"the body is nested deeper than {max_depth} levels",
                                data={"field": "body", "reason": "too_deep", "path": path,
                                      "max_depth": max_depth})
        for key, child in items:
            if isinstance(child, dict | list | int):
                stack.append((child, depth + 1, f"{path}[{key!r}]" if isinstance(key, str)
                              else f"{path}[{key}]"))


class JsonRequest(Request[Any, Any, Any]):
    """Litestar request whose JSON body parsing refuses hostile input with typed errors
    (SEC-6001, SEC-6002). ``app.state.max_json_depth`` sets the nesting limit."""

    async def json(self) -> Any:
        """The decoded body, after the media-type, encoding, depth and range checks.

        Raises:
            UnsupportedMediaType: the Content-Type is not ``application/json``.
            InvalidParams: ``data.reason`` is ``not_utf8``, ``malformed``, ``too_deep``,
                ``number_range`` or ``integer_range``.
        """
        if self._json is not Empty:
            return self._json
        if self._connection_state.json is not Empty:
            self._json = self._connection_state.json
            return self._json
        media_type = self.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type != "application/json":
            raise UnsupportedMediaType(
                "request bodies must be sent as Content-Type: application/json",
                data={"content_type": media_type[:128]})
        body = await self.body()
        depth: int = getattr(self.app.state, "max_json_depth", DEFAULT_MAX_JSON_DEPTH)
        try:
            value = msgspec.json.decode(body or b"null")
        except UnicodeDecodeError:
            raise InvalidParams("the body is not valid UTF-8",
                                data={"field": "body", "reason": "not_utf8"}) from None
        except RecursionError:
            raise InvalidParams(f"the body is nested deeper than {depth} levels",
                                data={"field": "body", "reason": "too_deep",
                                      "max_depth": depth}) from None
        except msgspec.ValidationError as exc:
            raise InvalidParams(f"a number in the body is out of range: {exc}",
                                data={"field": "body", "reason": "number_range"}) from None
        except msgspec.DecodeError as exc:
            raise InvalidParams(f"the body is not valid JSON: {exc}",
                                data={"field": "body", "reason": "malformed"}) from None
        if body.count(b"[") + body.count(b"{") > depth or _LONG_DIGITS.search(body):
            check_json_value(value, depth)
        self._json = self._connection_state.json = value
        return value
