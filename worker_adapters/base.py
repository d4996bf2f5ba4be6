"""The engine adapter seam: one small interface for every inference engine (PLACE-5003).

An adapter turns a :class:`CompletionRequest` into an async stream of :class:`Delta`
items closed by exactly one :class:`Finish`. A stream that ends without a ``Finish`` is
an interrupted stream: the caller must treat it as a failure, never as success
(DESIGN.md §5). Cancelling is closing the iterator (``aclose()``), which must abort the
engine request.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from typing import Any

import msgspec

__all__ = [
    "CompletionRequest",
    "Delta",
    "EngineAdapter",
    "EngineIdentity",
    "Finish",
    "PreparedPrompt",
    "StreamItem",
]


class EngineIdentity(msgspec.Struct, frozen=True):
    """What identifies the computation an engine performs; all are determinism inputs.

    Attributes:
        name: engine name, e.g. ``llama.cpp``.
        version: engine library version.
        build_fingerprint: ``b3:`` hash of build flags, CPU features and server settings.
        model_hash: ``sha256:<hex>`` of the weights file.
        settings: the engine settings folded into the fingerprint, for display.
        batch_invariant: the engine's output for a request does not depend on what else
            it computes at the same time (vLLM with ``VLLM_BATCH_INVARIANT=1``, the mock).
            An engine that is not may only serve record and strict_replay steps in an
            exclusive slot (PLACE-5005).
        isolated_slots: each slot of a replica is an engine context of its own that
            serves one request at a time (the llama.cpp worker), so a slot is exclusive by
            construction.
    """

    name: str
    version: str
    build_fingerprint: str
    model_hash: str
    settings: dict[str, Any]
    batch_invariant: bool = False
    isolated_slots: bool = False


class PreparedPrompt(msgspec.Struct, frozen=True):
    """The exact text sent to the engine and its length in the model's own tokens."""

    text: str
    tokens_in: int


class CompletionRequest(msgspec.Struct, frozen=True):
    """One completion, with every sampling parameter explicit (DESIGN.md §5).

    Units: ``max_tokens`` in tokens. ``seed`` is always set. ``json_schema``, when set,
    asks the engine to constrain decoding to JSON matching that schema (an adapter whose
    engine cannot do it ignores it; the orchestrator validates the output either way).
    """

    prompt: str
    seed: int
    temperature: float
    top_k: int
    top_p: float
    min_p: float
    repeat_penalty: float
    max_tokens: int
    stop: Sequence[str] = ()
    json_schema: dict[str, Any] | None = None


class Delta(msgspec.Struct, frozen=True):
    """One generated token: its vocabulary id and its exact bytes (STREAM-2006).

    ``data`` is the token's bytes, which may end inside a UTF-8 character; ``None`` means
    the UTF-8 encoding of ``text`` (engines that only stream text). When ``data`` is set,
    ``text`` is informative only: the orchestrator derives a frame's text from the bytes.
    """

    text: str
    token_id: int
    data: bytes | None = None


class Finish(msgspec.Struct, frozen=True):
    """The engine closed the stream on purpose: ``stop``, ``length`` ...

    ``tokens`` is the number of tokens the engine sampled, when it says so: it exceeds
    the Deltas yielded by the tokens withheld because they completed a stop string.
    """

    reason: str
    tokens: int | None = None


StreamItem = Delta | Finish


class EngineAdapter(abc.ABC):
    """A client for one engine replica.

    Subclasses implement :meth:`prepare` and :meth:`stream`. ``requests`` counts every
    request sent to the engine, so tests can prove that ``replay`` sends none.
    ``constrained_decoding`` names how the engine honours ``json_schema`` (``"gbnf"``,
    ``"json_schema"``, ``"guided_json"``, ``"mock"``) or is ``None`` when it does not.
    """

    constrained_decoding: str | None = None

    def __init__(self, identity: EngineIdentity) -> None:
        self.identity = identity
        self.requests = 0
        self.tokens_generated = 0

    @abc.abstractmethod
    def prepare(self, *, prompt: str | None, messages: Sequence[dict[str, str]] | None) -> \
            PreparedPrompt:
        """Render chat ``messages`` with the model's own template (or take ``prompt`` raw)
        and count its tokens with the model's tokenizer. Pure: no engine request."""

    @abc.abstractmethod
    def stream(self, request: CompletionRequest) -> AsyncIterator[StreamItem]:
        """Start a completion and yield its tokens, then one :class:`Finish`.

        Raises:
            contracts.errors.EngineError: the engine refused or broke the request.
        """

    def check_seed(self, seed: int) -> None:  # noqa: B027 - optional
        """Refuse, before anything runs, a seed the engine would not honour exactly.

        Raises:
            contracts.errors.InvalidParams: naming ``params.seed`` in ``data["field"]``.
        """

    def check_constraint(self, schema: dict[str, Any]) -> None:  # noqa: B027 - optional
        """Refuse, before anything runs, a schema the engine cannot constrain decoding to.

        Raises:
            contracts.errors.InvalidParams: the schema cannot be compiled for this engine.
        """

    async def aclose(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release connections held by the adapter."""
