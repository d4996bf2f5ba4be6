"""A mock engine whose chat template adds a system turn, as SmolLM2's does (NERVE-4091).

Shared by the unit tests and the BDD steps of the no-hidden-prompts requirements.
"""

from __future__ import annotations

from collections.abc import Sequence

from worker_adapters.base import PreparedPrompt
from worker_adapters.mock import MockEngine

__all__ = ["SMOL_SYSTEM", "SmolMock", "TemplatedTokenizer"]

SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
"""The system turn SmolLM2's chat template inserts when the messages have none."""


class TemplatedTokenizer:
    """A chat template that adds a system turn when there is none, as SmolLM2's does."""

    def render(self, messages: Sequence[dict[str, str]]) -> str:
        """ChatML turns, the default system turn first, the generation prompt last."""
        turns = list(messages)
        if not turns or turns[0]["role"] != "system":
            turns = [{"role": "system", "content": SMOL_SYSTEM}, *turns]
        return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in turns) \
            + "<|im_start|>assistant\n"

    def count(self, text: str) -> int:
        """One token per whitespace word."""
        return len(text.split())

    def token_id(self, piece: str) -> int:
        """No vocabulary."""
        return -1

    def piece(self, token_id: int) -> bytes:
        """No vocabulary."""
        return b""


class SmolMock(MockEngine):
    """The mock engine rendering ``messages`` with a :class:`TemplatedTokenizer`."""

    template = TemplatedTokenizer()

    def prepare(self, *, prompt: str | None,
                messages: Sequence[dict[str, str]] | None) -> PreparedPrompt:
        """A prompt as itself; messages through :attr:`template` (named ``mock``)."""
        if prompt is not None:
            return super().prepare(prompt=prompt, messages=None)
        text = self.template.render(messages or [])
        return PreparedPrompt(text=text, tokens_in=self.template.count(text), template="mock")
