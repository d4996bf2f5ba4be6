"""``python -m test_harness.integration.divergent_server CONFIG``: a real Granian server
whose mock engine can be made to diverge from its own recordings, for the inspector's
browser test (REC-7065).

The engine is the seeded mock (:func:`worker_adapters.mock.default_handler`) until the
file ``<data_dir>/diverge`` exists; from then on every request answers the seeded
tokens up to index :data:`DIVERGE_AT`, then the token ``" divergent"`` (id 7) in place
of the seeded one, and stops. The identity is the mock's own, so a ``strict_replay`` of
a recording made before the file existed passes its determinism-input check and ends
with ``REPLAY_DIVERGED`` at index :data:`DIVERGE_AT`.
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import AsyncIterator

import anyio

from orchestrator_core.config import PoolConfig, load_config
from orchestratord.cli import serve
from worker_adapters.base import CompletionRequest, Delta, EngineAdapter, Finish, StreamItem
from worker_adapters.mock import MockEngine, default_handler
from worker_adapters.registry import MockFactory, default_drivers

__all__ = ["DIVERGENT", "DIVERGE_AT", "main"]

DIVERGE_AT = 3
"""The index of the first token that differs once the engine diverges."""
DIVERGENT = Delta(text=" divergent", token_id=7, data=b" divergent")
"""The token the diverged engine answers at :data:`DIVERGE_AT`."""


def _factory(flag: pathlib.Path) -> MockFactory:
    def factory(pc: PoolConfig, index: int) -> EngineAdapter:
        base = default_handler()

        async def handler(req: CompletionRequest) -> AsyncIterator[StreamItem]:
            diverge = await anyio.Path(flag).exists()
            i = 0
            async for item in base(req):
                if diverge and isinstance(item, Delta) and i == DIVERGE_AT:
                    yield DIVERGENT
                    yield Finish(reason="stop", tokens=i + 1)
                    return
                i += isinstance(item, Delta)
                yield item

        return MockEngine(handler)

    return factory


def main(argv: list[str]) -> None:
    """Serve the config file ``argv[0]`` with the divergable mock engine."""
    cfg = load_config(argv[0])
    flag = pathlib.Path(cfg.data_dir) / "diverge"
    serve(cfg, drivers=default_drivers(mock_factory=_factory(flag)))


if __name__ == "__main__":
    main(sys.argv[1:])
