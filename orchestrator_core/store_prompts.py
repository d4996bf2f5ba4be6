"""Rendered prompts in the embedded store: the exact text each engine was sent, kept once
per distinct text under its content hash (NERVE-4091, schema v13).

:class:`SqliteStore` mixes this class in (it extends :class:`RunQueries`, so the store's
one base names both).
"""

from __future__ import annotations

from orchestrator_core.store_runs import RunQueries

__all__ = ["PromptTexts"]


class PromptTexts(RunQueries):
    """The ``Store`` methods of ``prompt_texts`` over the store's connection."""

    def record_prompt_text(self, text_hash: str, text: str) -> None:
        """Keep ``text`` under ``text_hash`` (``b3:<hex>`` of its UTF-8 bytes); a hash
        already kept is left as it is. Durable on return."""
        self._conn.execute("INSERT OR IGNORE INTO prompt_texts (hash, text) VALUES (?, ?)",
                           (text_hash, text))

    def prompt_text(self, text_hash: str) -> str | None:
        """The text kept under ``text_hash``, or None."""
        row = self._conn.execute("SELECT text FROM prompt_texts WHERE hash = ?",
                                 (text_hash,)).fetchone()
        return None if row is None else str(row[0])
