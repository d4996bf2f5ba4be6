"""The exact-match cache's lookup in the embedded store (REC-7102, schema v17).

A ``record`` LLM Step that runs on an engine is stored with its cache key
(``steps.cache_key``); the partial index ``steps_cache_key`` holds it once the Step has
succeeded. :class:`SqliteStore` mixes this class in (it extends :class:`PromptTexts`, so
the store's one base names both).
"""

from __future__ import annotations

from orchestrator_core.rows import StepRow
from orchestrator_core.store_prompts import PromptTexts

__all__ = ["CacheQueries"]

_LOOKUP = (" INDEXED BY steps_cache_key WHERE cache_key = ? AND cache_key IS NOT NULL"
           " AND status = 'succeeded' AND EXISTS (SELECT 1 FROM runs"
           " WHERE runs.run_id = steps.run_id AND runs.tenant = ?) ORDER BY rowid LIMIT 1")
"""After the Step columns' ``SELECT``: the earliest succeeded Step with the key, in the
tenant, read through the partial index."""


class CacheQueries(PromptTexts):
    """The ``Store`` method of the exact-match cache over the store's connection."""

    def cached_step(self, tenant: str, cache_key: str) -> StepRow | None:
        """The earliest succeeded Step of ``tenant`` stored with ``cache_key``, or None
        (REC-7102): one probe of the partial index, then of the Run's primary key, so
        its cost does not grow with the Steps the store holds. A store opened at a
        schema before v17 has no cache and answers None.

        Args:
            tenant: the caller's tenant; another tenant's Step is never returned.
            cache_key: ``b3:<hex>`` from :func:`orchestrator_core.exact_cache.cache_key`.
        """
        if "cache_key" not in self._steps:
            return None
        values = self._conn.execute(self._steps + _LOOKUP, (cache_key, tenant)).fetchone()
        return None if values is None else StepRow(*values)
