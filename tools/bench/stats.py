"""Order statistics of latency samples (all values in ms)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import msgspec

__all__ = ["PathStats", "percentile", "summarise"]


class PathStats(msgspec.Struct, frozen=True):
    """Latency of one path over R rounds of K requests.

    Attributes:
        p50_ms: median of the per-round medians (ms).
        p99_ms: nearest-rank 99th percentile over all samples (ms).
        round_medians_ms: the median of each round (ms).
        samples_ms: every sample, round by round, in request order (ms).
    """

    p50_ms: float
    p99_ms: float
    round_medians_ms: list[float]
    samples_ms: list[list[float]]


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile.

    Args:
        values: samples (any unit; the result has the same unit).
        q: percentile in (0, 100].

    Returns:
        The smallest sample with at least ``q`` percent of the samples at or below it.

    Raises:
        ValueError: ``values`` is empty or ``q`` is out of range.
    """
    if not values:
        raise ValueError("percentile of no samples")
    if not 0 < q <= 100:
        raise ValueError(f"percentile {q} not in (0, 100]")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def summarise(rounds: Sequence[Sequence[float]]) -> PathStats:
    """p50 as the median of per-round medians, p99 over all samples.

    Args:
        rounds: samples in ms, one inner sequence per round (none empty).

    Returns:
        The path's statistics, rounded to 0.001 ms.
    """
    medians = [statistics.median(r) for r in rounds]
    every = [x for r in rounds for x in r]
    return PathStats(
        p50_ms=round(statistics.median(medians), 3),
        p99_ms=round(percentile(every, 99), 3),
        round_medians_ms=[round(m, 3) for m in medians],
        samples_ms=[[round(x, 3) for x in r] for r in rounds],
    )
