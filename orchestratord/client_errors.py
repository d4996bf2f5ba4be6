"""The Python client's error names from the client contract (NERVE-4072).

Every refusal and every ``error`` frame is raised as the typed
:class:`contracts.errors.OrchestratorError` subclass of its code; the contract's names
are aliases of those classes, so ``except ERR_INVALID_MODEL`` catches what
``except InvalidModel`` does:

* ``ERR_INVALID_MODEL``: :class:`contracts.errors.InvalidModel` (a model no pool serves);
* ``ERR_CONTEXT_BUDGET``: :class:`contracts.errors.ContextBudget` (the request does not
  fit the model's context);
* ``ERR_SERVER``: :class:`contracts.errors.OrchestratorError`, any structured server error
  passed through with its ``code``, ``message``, ``retriable`` and ``data``;
* ``ERR_STREAM_DISCONNECTED``: :class:`StreamDisconnected`, raised by the client itself
  when a Step's stream ends without its terminal frame.

The client retries nothing: a disconnected stream is raised once, with what a caller
needs to resume it (``Last-Event-ID``).
"""

from __future__ import annotations

from contracts.errors import ContextBudget, InvalidModel, OrchestratorError

__all__ = ["ERR_CONTEXT_BUDGET", "ERR_INVALID_MODEL", "ERR_SERVER", "ERR_STREAM_DISCONNECTED",
           "StreamDisconnected"]

ERR_INVALID_MODEL = InvalidModel
ERR_CONTEXT_BUDGET = ContextBudget
ERR_SERVER = OrchestratorError


class StreamDisconnected(Exception):
    """A Step's stream ended, or its connection broke, before its ``end`` or ``error``
    frame (NERVE-4072). The Step itself may still be running. A Run-level stream (a
    Run's Facts, NERVE-4111) raises it too when its connection breaks, with ``kind``
    ``"run"`` and the Run's id in ``step_id``.

    Attributes:
        name: ``"ERR_STREAM_DISCONNECTED"``, the contract's name.
        retriable: True: reading the stream again resumes it.
        step_id: the Step whose stream broke (the Run's id when ``kind`` is ``"run"``).
        kind: ``"step"`` or ``"run"``, what ``step_id`` names.
        last_event_id: the ``id`` of the last durable frame received (None before the
            first); pass it as ``last_event_id`` to read the rest.
    """

    name = "ERR_STREAM_DISCONNECTED"
    retriable = True

    def __init__(self, step_id: str, last_event_id: int | None, reason: str, *,
                 kind: str = "step") -> None:
        super().__init__(f"the stream of {kind} {step_id} ended without a terminal frame "
                         f"after event id {last_event_id}: {reason}")
        self.step_id = step_id
        self.kind = kind
        self.last_event_id = last_event_id


ERR_STREAM_DISCONNECTED = StreamDisconnected
