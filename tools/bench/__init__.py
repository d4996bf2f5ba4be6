"""``python -m tools.bench``: what the orchestrator costs, measured in one run.

Two measurements, printed side by side:

1. the latency an ``llm_call`` Step adds over asking the engine replica directly for the
   same completion (same raw prompt, sampling parameters and seed), in ms and as a ratio;
2. replay time / record time (and strict_replay time / record time) of the demo flow.

Modules: :mod:`.stats` (medians and percentiles), :mod:`.latency` (measurement 1),
:mod:`.replay` (measurement 2), :mod:`.report` (text and JSON output) and :mod:`.cli`.
"""

from __future__ import annotations

__all__: list[str] = []
