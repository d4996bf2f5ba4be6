"""Circuit breakers guarding external calls: engine replicas and tool executors (POLICY-3002).

``closed`` → (``failure_threshold`` consecutive failures) → ``open``: calls are refused
for ``reset_timeout_s`` → ``half_open``: exactly one probe call is let through; its success
closes the breaker, its failure opens it again. Every transition is returned to the caller,
who records it as an ``escalation`` frame.
"""

from __future__ import annotations

from contracts.events import BreakerState, EscalationData
from orchestrator_core.clock import Clock

__all__ = ["BreakerState", "CircuitBreaker", "Transition"]


Transition = EscalationData
"""A breaker transition is the ``escalation`` frame's payload (contracts.events)."""


class CircuitBreaker:
    """One breaker.

    Args:
        target: what it guards, e.g. a replica_id.
        clock: injected time.
        failure_threshold: consecutive failures that open it.
        reset_timeout_s: seconds it stays open before a half-open probe.
    """

    def __init__(self, target: str, clock: Clock, *, failure_threshold: int = 3,
                 reset_timeout_s: float = 5.0) -> None:
        self.target = target
        self.clock = clock
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self.state = BreakerState.CLOSED
        self.failures = 0
        self._opened_at = 0.0
        self._probing = False

    def _move(self, to: BreakerState, reason: str) -> Transition:
        t = Transition(kind="circuit_breaker", target=self.target, from_state=self.state,
                       to_state=to, failures=self.failures, reason=reason)
        self.state = to
        return t

    def allow(self) -> tuple[bool, Transition | None]:
        """May a call go through now? An open breaker past its timeout lets one probe in.

        Returns:
            ``(allowed, transition)``; the transition is ``open → half_open`` when it moved.
        """
        if self.state is BreakerState.CLOSED:
            return True, None
        if self.state is BreakerState.OPEN:
            if self.clock.monotonic() - self._opened_at < self.reset_timeout_s:
                return False, None
            t = self._move(BreakerState.HALF_OPEN, "reset timeout elapsed; probing")
            self._probing = True
            return True, t
        if self._probing:
            return False, None
        self._probing = True
        return True, None

    def peek(self) -> bool:
        """Would :meth:`allow` let a call through (without taking the probe)?"""
        if self.state is BreakerState.OPEN:
            return self.clock.monotonic() - self._opened_at >= self.reset_timeout_s
        return not (self.state is BreakerState.HALF_OPEN and self._probing)

    def retry_after_ms(self) -> int:
        """Milliseconds until an open breaker lets a probe through (0 when it would now)."""
        if self.state is not BreakerState.OPEN:
            return 0
        left = self.reset_timeout_s - (self.clock.monotonic() - self._opened_at)
        return max(0, int(left * 1000) + 1)

    def release_probe(self) -> None:
        """The call ended without a verdict (cancelled, over budget): free the probe slot."""
        self._probing = False

    def success(self) -> Transition | None:
        """Record a success; closes a half-open breaker."""
        self.failures = 0
        self._probing = False
        if self.state is not BreakerState.CLOSED:
            return self._move(BreakerState.CLOSED, "probe succeeded")
        return None

    def failure(self, reason: str) -> Transition | None:
        """Record a failure; opens the breaker at the threshold or after a failed probe."""
        self.failures += 1
        self._probing = False
        if self.state is BreakerState.HALF_OPEN or (
                self.state is BreakerState.CLOSED and self.failures >= self.failure_threshold):
            self._opened_at = self.clock.monotonic()
            return self._move(BreakerState.OPEN, reason)
        return None
