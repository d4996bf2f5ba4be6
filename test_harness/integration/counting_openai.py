"""``python -m test_harness.integration.counting_openai PORT``: the OpenAI-compatible mock
server of :mod:`tools.bench.mock_openai`, paced at one token chunk per 20 ms so that
completions overlap (PG-9107).

It is that server and nothing more: its ``GET /stats`` answers ``{"current": n, "max": <most
completions in flight at once>, "total": <all>}``
(:class:`tools.bench.mock_openai.Concurrency`).
"""

from __future__ import annotations

import sys

from tools.bench.mock_openai import main as serve

__all__ = ["CHUNK_DELAY_MS", "main"]

CHUNK_DELAY_MS = 20
"""The pause before each streamed chunk (ms)."""


def main(argv: list[str] | None = None) -> None:
    """Serve the paced mock on ``127.0.0.1:<port>`` until SIGTERM.

    Args:
        argv: ``[port]``.
    """
    port = (argv if argv is not None else sys.argv[1:])[0]
    serve([port, "--chunk-delay-ms", str(CHUNK_DELAY_MS)])


if __name__ == "__main__":
    main()
