"""Hard budgets at Run and Step: admission checks and reservations (POLICY-3000).

* ``max_tokens_in`` is checked with the model's own token count before dispatch, and the
  prompt tokens are held against the Run's input budget while the Step runs.
* Output tokens and cost are *reserved* when a Step is admitted, against what the Run has
  left (its budget minus the usage of finished Steps minus the reservations of running
  ones). Admission is synchronous on the event loop, so concurrent Steps can never
  overshoot a Run budget together. A Step whose reservation is smaller than its
  ``max_tokens`` gets that reservation as a hard cap: reaching it unfinished is
  ``BUDGET_EXCEEDED``, never a silent truncation.
* ``max_wall_ms`` of the Run counts from the Run's creation; of the Step, from its
  submission. It holds for every Step type: a Step of any type is refused once the Run's
  deadline has passed, and crossing a deadline while it runs is ``DEADLINE_EXCEEDED``
  (:mod:`orchestrator_core.steps.runner`).
* On a store several processes share (PG-9106), every process's reservations are rows
  of a shared ledger: a Step is admitted against the Run's stored usage minus ALL the
  reservations held, read and extended in one transaction under the Run's row lock, so
  concurrent Steps through several processes never overshoot a Run budget either.

Units: tokens, USD, milliseconds.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Protocol

from contracts.errors import BudgetExceeded
from contracts.runs import Budgets, Run
from orchestrator_core.config import PriceTable

__all__ = ["BudgetBook", "Ledger", "LedgerView", "Reservation"]


@dataclass(frozen=True)
class Reservation:
    """What one admitted Step may use.

    Attributes:
        run_id: the Run the reservation counts against.
        tokens_in: prompt tokens held against the Run's input budget.
        tokens_out: output tokens reserved (and the Step's hard cap when ``capped``).
        cost_usd: cost reserved (input cost + reserved output cost).
        capped: True when a budget, not ``max_tokens``, limits the output.
        cap_budget: which budget sets the cap (``max_tokens_out`` or ``max_cost_usd``).
        deadline_s: wall-clock deadline (epoch seconds) or ``math.inf``.
    """

    run_id: str
    tokens_in: int
    tokens_out: int
    cost_usd: float
    capped: bool
    deadline_s: float
    cap_budget: str = "max_tokens_out"


class LedgerView(Protocol):
    """One Run's ledger while its row lock is held (PG-9106).

    Attributes:
        spent: ``(tokens_in, tokens_out, cost_usd)``: the Run's stored usage plus every
            reservation any process holds against it.
    """

    spent: tuple[float, float, float]

    def add(self, step_id: str, tokens_in: int, tokens_out: int, cost_usd: float) -> None:
        """Hold a reservation, committed with the lock's transaction."""


class Ledger(Protocol):
    """Reservations shared by the processes of one store (PG-9106)."""

    def hold(self, run_id: str) -> AbstractContextManager[LedgerView]:
        """Lock the Run's row and read what it has spent; commit on exit, roll back on
        error."""

    def release(self, step_id: str) -> None:
        """Drop a Step's reservation."""


def _min(*values: float | None) -> float:
    return min((v for v in values if v is not None), default=math.inf)


class BudgetBook:
    """Reservations of in-flight Steps, per Run, on top of the stored usage.

    The usage of finished Steps comes with the :class:`Run` passed in.

    Args:
        prices: the versioned price table.
        ledger: the reservations every process of a shared store holds (PG-9106); None
            (SQLite, one process): this book's own are all there are.
    """

    def __init__(self, prices: PriceTable, ledger: Ledger | None = None) -> None:
        self.prices = prices
        self.ledger = ledger
        self._reserved: dict[str, dict[str, Reservation]] = {}

    def remaining(self, run: Run,
                  spent: tuple[float, float, float] | None = None) -> dict[str, float]:
        """What the Run has left per budget (``inf`` where it has none).

        Args:
            run: the Run (its budgets, and the usage read with it).
            spent: ``(tokens_in, tokens_out, cost_usd)`` used and reserved, read from a
                shared ledger (PG-9106); None: the Run's usage plus this book's
                reservations.

        Returns:
            Keys ``tokens_in``, ``tokens_out``, ``cost_usd``, ``wall_ms``, ``deadline_s``.
        """
        if spent is None:
            usage = run.usage  # finished Steps' usage, read with the Run
            held = self._reserved.get(run.run_id, {}).values()
            spent = (usage.tokens_in + sum(r.tokens_in for r in held),
                     usage.tokens_out + sum(r.tokens_out for r in held),
                     usage.cost_usd + sum(r.cost_usd for r in held))
        b = run.budgets
        created = dt.datetime.fromisoformat(run.created_at).timestamp()
        out = {
            "tokens_in": _min(b.max_tokens_in) - spent[0],
            "tokens_out": _min(b.max_tokens_out) - spent[1],
            "cost_usd": _min(b.max_cost_usd) - spent[2],
            "wall_ms": _min(b.max_wall_ms) - 0.0,
        }
        out["deadline_s"] = created + out["wall_ms"] / 1000.0
        return out

    def wall_deadline(self, run: Run, now_s: float) -> float:
        """The Run's wall-clock deadline, for a Step that reserves no tokens (POLICY-3000).

        Args:
            run: the Run (its ``max_wall_ms`` and ``created_at``).
            now_s: wall-clock time, epoch seconds.

        Returns:
            The deadline in epoch seconds, ``math.inf`` when the Run has no wall budget.

        Raises:
            BudgetExceeded: the deadline has passed (``data.budget`` ``max_wall_ms``).
        """
        if run.budgets.max_wall_ms is None:
            return math.inf
        created = dt.datetime.fromisoformat(run.created_at).timestamp()
        deadline = created + run.budgets.max_wall_ms / 1000.0
        if now_s >= deadline:
            raise BudgetExceeded("the run's wall-clock budget is spent",
                                 data={"budget": "max_wall_ms"})
        return deadline

    def admit(self, run: Run, step_id: str, step: Budgets, *, model: str, tokens_in: int,
              max_tokens: int, now_s: float) -> Reservation:
        """Check and reserve the budgets of one Step before anything runs.

        Args:
            run: the Run (its budgets and id).
            step_id: the Step being admitted.
            step: the Step's own budgets.
            model: model id (prices).
            tokens_in: prompt tokens counted with the model's tokenizer.
            max_tokens: the sampling limit of the Step.
            now_s: wall-clock time, epoch seconds.

        Returns:
            The reservation, already held.

        Raises:
            BudgetExceeded: an input-token, output-token, cost or wall-clock budget of the
                Step or the Run cannot admit this Step; ``data`` names the budget.
        """
        with self._view(run.run_id) as view:
            res = self._reserve(run, step, model, tokens_in, max_tokens, now_s,
                                self.remaining(run, None if view is None else view.spent))
            if view is not None:
                view.add(step_id, res.tokens_in, res.tokens_out, res.cost_usd)
        self._reserved.setdefault(run.run_id, {})[step_id] = res
        return res

    @contextmanager
    def _view(self, run_id: str) -> Iterator[LedgerView | None]:
        if self.ledger is None:
            yield None
        else:
            with self.ledger.hold(run_id) as view:
                yield view

    def _reserve(self, run: Run, step: Budgets, model: str, tokens_in: int,
                 max_tokens: int, now_s: float, left: dict[str, float]) -> Reservation:
        in_cap = _min(step.max_tokens_in, left["tokens_in"])
        if tokens_in > in_cap:
            raise BudgetExceeded(
                f"prompt of {tokens_in} tokens exceeds the input budget ({int(in_cap)} left)",
                data={"budget": "max_tokens_in", "tokens_in": tokens_in, "left": int(in_cap)})
        deadline = _min(left["deadline_s"])
        if now_s >= deadline:
            raise BudgetExceeded("the run's wall-clock budget is spent",
                                 data={"budget": "max_wall_ms"})
        price = self.prices.models.get(model)
        cost_in = self.prices.cost_usd(model, tokens_in, 0)
        cost_cap = _min(step.max_cost_usd, left["cost_usd"])
        if cost_in > cost_cap:
            raise BudgetExceeded("the prompt alone exceeds the cost budget",
                                 data={"budget": "max_cost_usd", "cost_in_usd": cost_in})
        token_cap = _min(step.max_tokens_out, left["tokens_out"])
        out_cap, which = token_cap, "max_tokens_out"
        if price is not None and price.usd_per_mtok_out > 0 and cost_cap != math.inf:
            by_cost = math.floor((cost_cap - cost_in) * 1e6 / price.usd_per_mtok_out)
            if by_cost < out_cap:
                out_cap, which = by_cost, "max_cost_usd"
        if out_cap < 1:
            raise BudgetExceeded("no output budget left for this step",
                                 data={"budget": which})
        reserved = int(min(max_tokens, out_cap))
        return Reservation(run_id=run.run_id, tokens_in=tokens_in, tokens_out=reserved,
                           cost_usd=cost_in + self.prices.cost_usd(model, 0, reserved),
                           capped=out_cap < max_tokens, deadline_s=deadline,
                           cap_budget=which)

    def release(self, run_id: str, step_id: str) -> None:
        """Drop a Step's reservation (its usage is in the store by now)."""
        held = self._reserved.get(run_id)
        if held is not None:
            if held.pop(step_id, None) is not None and self.ledger is not None:
                self.ledger.release(step_id)
            if not held:
                del self._reserved[run_id]
