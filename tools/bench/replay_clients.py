"""The two HTTP clients of ``python -m tools.bench.replay``, each used for all three arms.

The bench times record, replay and read-back with the SAME client code, so the arms
differ only in what the server does. It runs them with two clients, one after the other,
and reports both:

* :class:`RawClient` (the headline): :class:`tools.bench.rawhttp.RawHttp`, one keep-alive
  connection, request bytes written by hand and the answer read whole (chunked framing
  removed), with no parsing of the SSE body. Its cost per request is a few tens of µs,
  so the figures are the server's and the socket's.
* :class:`HttpxClient` (the earlier measure, kept for comparison): ``httpx`` streaming
  the body with ``aiter_raw``, as the bench did before. httpx spends 0.5 to 0.75 ms of
  client CPU per request here, which on 2 shared cores is as much as the server's work
  for a replayed Step, and is paid by every arm alike.

Both return ``(content type, raw body)`` for a request and raise :class:`RuntimeError`
on a status other than 200 or 201.
"""

from __future__ import annotations

from typing import Protocol

import httpx
import msgspec

from tools.bench.rawhttp import RawHttp

__all__ = ["BenchClient", "HttpxClient", "RawClient"]

_SSE = "text/event-stream"
_enc = msgspec.json.Encoder()


class BenchClient(Protocol):
    """What the replay bench needs of an HTTP client."""

    name: str

    async def body(self, method: str, path: str, body: object | None = None,
                   stream: bool = False) -> tuple[str, bytes]:
        """One request read to the end of its body: ``(content type, raw body)``;
        ``stream`` asks for ``text/event-stream`` (a Step answered with its stream)."""
        ...

    async def aclose(self) -> None:
        """Close the connection."""
        ...


def _check(method: str, path: str, status: int, raw: bytes) -> None:
    if status not in (200, 201):
        raise RuntimeError(f"{method} {path}: {status} {raw[:200]!r}")


class HttpxClient:
    """``httpx.AsyncClient`` streaming each body raw (the bench's client until now).

    Args:
        url: ``http://127.0.0.1:<port>``.
    """

    name = "httpx"

    def __init__(self, url: str) -> None:
        self._http = httpx.AsyncClient(base_url=url, timeout=120.0)

    async def body(self, method: str, path: str, body: object | None = None,
                   stream: bool = False) -> tuple[str, bytes]:
        """See :meth:`BenchClient.body`."""
        headers = {"accept": _SSE} if stream else {}
        async with self._http.stream(method, path, json=body, headers=headers) as resp:
            raw = b"".join([chunk async for chunk in resp.aiter_raw()])
            _check(method, path, resp.status_code, raw)
            return resp.headers.get("content-type", ""), raw

    async def aclose(self) -> None:
        """See :meth:`BenchClient.aclose`."""
        await self._http.aclose()


class RawClient:
    """:class:`RawHttp` on one keep-alive connection.

    Args:
        url: ``http://127.0.0.1:<port>``.
    """

    name = "raw"

    def __init__(self, url: str) -> None:
        self._http = RawHttp(url)

    async def body(self, method: str, path: str, body: object | None = None,
                   stream: bool = False) -> tuple[str, bytes]:
        """See :meth:`BenchClient.body`."""
        resp = await self._http.request(method, path,
                                        None if body is None else _enc.encode(body),
                                        {"Accept": _SSE} if stream else None)
        _check(method, path, resp.status, resp.body)
        return resp.headers.get("content-type", ""), resp.body

    async def aclose(self) -> None:
        """See :meth:`BenchClient.aclose`."""
        await self._http.aclose()
