"""A minimal keep-alive HTTP/1.1 client for latency benchmarks (loopback only).

The latency benchmarks compare servers, so the client's own cost should be small and the
same on every path: httpx spends about 1.2 ms of CPU per streamed request on these
machines, as much as the server under test. :class:`RawHttp` writes the request bytes
and reads the whole answer (``Content-Length`` or chunked, to the last chunk) with an
asyncio stream, nothing else: no header normalisation, no decoding, no redirects.
"""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["RawHttp", "RawResponse"]


class RawResponse:
    """A whole answer: ``status``, lower-cased ``headers`` and the ``body`` bytes (chunks
    joined, framing removed)."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class RawHttp:
    """One keep-alive connection to ``http://host:port``.

    Args:
        base_url: ``http://127.0.0.1:<port>``.
    """

    def __init__(self, base_url: str) -> None:
        host, port = base_url.removeprefix("http://").rstrip("/").split(":")
        self.host = host
        self.port = int(port)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self._reader, self._writer

    async def request(self, method: str, path: str, body: bytes | None = None,
                      headers: dict[str, str] | None = None) -> RawResponse:
        """Send one request and read its whole answer.

        Args:
            method: ``GET`` or ``POST``.
            path: the request target.
            body: a JSON body (sent with ``Content-Type: application/json``).
            headers: more request headers.

        Returns:
            The answer, its body read to the end.

        Raises:
            ConnectionError: the server closed the connection mid-answer.
        """
        reader, writer = await self._connect()
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body is not None:
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
        hdrs = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            hdrs[name.strip().lower()] = value.strip()
        if "content-length" in hdrs:
            data = await reader.readexactly(int(hdrs["content-length"]))
        elif hdrs.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                parts.append((await reader.readexactly(size + 2))[:-2])
            data = b"".join(parts)
        else:
            data = await reader.read()
            await self.aclose()
        if hdrs.get("connection", "").lower() == "close":
            await self.aclose()
        return RawResponse(int(status_line.split(" ", 2)[1]), hdrs, data)

    async def aclose(self) -> None:
        """Close the connection (the next request opens a new one)."""
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None
