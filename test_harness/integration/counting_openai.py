"""``python -m test_harness.integration.counting_openai PORT``: the OpenAI-compatible mock
server of :mod:`tools.bench.mock_openai`, slowed to one token chunk per 20 ms, counting
the completions it serves at once (PG-9107).

``GET /counts`` answers ``{"max": <most completions in flight at once>, "total": <all>}``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import MutableMapping
from typing import Any

import msgspec

from tools.bench.mock_openai import app as mock_app

__all__ = ["app", "main"]

_state = {"now": 0, "max": 0, "total": 0}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The mock app, with completions counted and slowed (see the module docstring)."""
    if scope["type"] == "http" and scope["path"] == "/counts":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": msgspec.json.encode(
            {"max": _state["max"], "total": _state["total"]})})
        return
    if scope["type"] != "http" or not scope["path"].endswith("completions"):
        await mock_app(scope, receive, send)
        return

    async def slow_send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.body":
            await asyncio.sleep(0.02)
        await send(message)

    _state["now"] += 1
    _state["total"] += 1
    _state["max"] = max(_state["max"], _state["now"])
    try:
        await mock_app(scope, receive, slow_send)
    finally:
        _state["now"] -= 1


def main(argv: list[str] | None = None) -> None:
    """Serve :func:`app` on ``127.0.0.1:<port>`` until SIGTERM.

    Args:
        argv: ``[port]``.
    """
    from granian.constants import Interfaces
    from granian.server.embed import Server

    port = int((argv if argv is not None else sys.argv[1:])[0])

    async def run() -> None:
        import signal

        server = Server(app, address="127.0.0.1", port=port, interface=Interfaces.ASGI,
                        log_access=False)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, server.stop)
        await server.serve()

    asyncio.run(run())


if __name__ == "__main__":
    main()
