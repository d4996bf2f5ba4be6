"""``python -m tools.bench``: what the orchestrator costs, measured in one run.

The measurements, printed one after the other:

1. the latency an ``llm_call`` Step adds over asking the engine replica directly for the
   same completion (same raw prompt, sampling parameters and seed), in ms and as a ratio;
2. replay time / record time (and strict_replay time / record time) of the demo flow;
3. recordings: export and import time per 10,000 frames, and the replay throughput from
   an imported recording on a server with no engine, in tokens/s delivered to a client
   (:mod:`.recordings`, REC-7115);
4. what structured logs and traces add to an ``llm_call`` (:mod:`.observability`).

Modules: :mod:`.stats` (medians and percentiles), :mod:`.latency` (measurement 1),
:mod:`.replay` (measurement 2), :mod:`.report` (text and JSON output) and :mod:`.cli`.
"""

from __future__ import annotations

__all__: list[str] = []
