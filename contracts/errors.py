"""The closed error vocabulary and the one error tree (DESIGN.md §4, NERVE-4030).

Every failure the server reports, as an HTTP status before a stream starts or as an
``error`` frame after it starts, is an :class:`OrchestratorError`. Each subclass fixes
its :class:`ErrorCode` and its HTTP status; identifiers travel as attributes and in
``data``, never only inside the message.

The tree::

    OrchestratorError
    ├── InvalidParams ............... INVALID_PARAMS 400
    │   ├── InvalidToolArgs ......... INVALID_TOOL_ARGS 400
    │   ├── InvalidModel ............ INVALID_MODEL 400
    │   └── ContextBudget ........... CONTEXT_BUDGET 400
    ├── UnsupportedMediaType ........ UNSUPPORTED_MEDIA_TYPE 415
    ├── Unauthorized ................ UNAUTHORIZED 401
    ├── BudgetExceeded .............. BUDGET_EXCEEDED 402
    ├── PolicyDenied ................ POLICY_DENIED 403
    │   ├── FsPolicyViolation ....... FS_POLICY_VIOLATION 403
    │   └── OriginNotAllowed ........ ORIGIN_NOT_ALLOWED 403
    ├── NotFound .................... NOT_FOUND 404
    ├── Conflict .................... CONFLICT 409
    │   ├── Nondeterminism .......... NONDETERMINISM 409
    │   └── DeterminismInputsDiffer . DETERMINISM_INPUTS_DIFFER 409
    ├── AdmissionReject ............. ADMISSION_REJECT 429 (Retry-After, X-Backoff-Ms)
    │   └── QueueFull ............... QUEUE_FULL 429
    ├── PoolUnready ................. POOL_UNREADY 503
    ├── PoolUnavailable ............. POOL_UNAVAILABLE 503
    ├── CircuitOpen ................. CIRCUIT_OPEN 503
    ├── EngineError ................. ENGINE_ERROR 502
    ├── Internal .................... INTERNAL 500
    └── StreamError (stream-only; carried by an ``error`` frame)
        ├── Cancelled ............... CANCELLED
        ├── ReplayDiverged .......... REPLAY_DIVERGED
        ├── DeadlineExceeded ........ DEADLINE_EXCEEDED
        ├── Interrupted ............. INTERRUPTED
        ├── ContractViolation ....... CONTRACT_VIOLATION
        └── OutputTooLarge .......... OUTPUT_TOO_LARGE (413 for completeness)
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar

import msgspec

__all__ = [
    "AdmissionReject",
    "BudgetExceeded",
    "Cancelled",
    "CircuitOpen",
    "Conflict",
    "ContextBudget",
    "ContractViolation",
    "DeadlineExceeded",
    "DeterminismInputsDiffer",
    "EngineError",
    "ErrorCode",
    "ErrorEnvelope",
    "FsPolicyViolation",
    "Internal",
    "Interrupted",
    "InvalidModel",
    "InvalidParams",
    "InvalidToolArgs",
    "Nondeterminism",
    "NotFound",
    "OrchestratorError",
    "OriginNotAllowed",
    "OutputTooLarge",
    "PolicyDenied",
    "PoolUnavailable",
    "PoolUnready",
    "QueueFull",
    "ReplayDiverged",
    "StreamError",
    "Unauthorized",
    "UnsupportedMediaType",
    "error_from_envelope",
]


class ErrorCode(enum.StrEnum):
    """The closed vocabulary of error codes. Adding a code is a contract change."""

    INVALID_PARAMS = "INVALID_PARAMS"
    INVALID_TOOL_ARGS = "INVALID_TOOL_ARGS"
    INVALID_MODEL = "INVALID_MODEL"
    CONTEXT_BUDGET = "CONTEXT_BUDGET"
    UNAUTHORIZED = "UNAUTHORIZED"
    BUDGET_EXCEEDED = "BUDGET_EXCEEDED"
    POLICY_DENIED = "POLICY_DENIED"
    FS_POLICY_VIOLATION = "FS_POLICY_VIOLATION"
    ORIGIN_NOT_ALLOWED = "ORIGIN_NOT_ALLOWED"
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
    NOT_FOUND = "NOT_FOUND"
    CONFLICT = "CONFLICT"
    NONDETERMINISM = "NONDETERMINISM"
    DETERMINISM_INPUTS_DIFFER = "DETERMINISM_INPUTS_DIFFER"
    ADMISSION_REJECT = "ADMISSION_REJECT"
    QUEUE_FULL = "QUEUE_FULL"
    POOL_UNREADY = "POOL_UNREADY"
    POOL_UNAVAILABLE = "POOL_UNAVAILABLE"
    CIRCUIT_OPEN = "CIRCUIT_OPEN"
    ENGINE_ERROR = "ENGINE_ERROR"
    INTERNAL = "INTERNAL"
    CANCELLED = "CANCELLED"
    REPLAY_DIVERGED = "REPLAY_DIVERGED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    INTERRUPTED = "INTERRUPTED"
    CONTRACT_VIOLATION = "CONTRACT_VIOLATION"
    OUTPUT_TOO_LARGE = "OUTPUT_TOO_LARGE"


class ErrorEnvelope(msgspec.Struct, omit_defaults=True):
    """The flat error body: ``{code, message, retriable, retry_after_ms?, data?}``.

    It is the JSON body of every 4xx/5xx response and the data of every ``error`` frame.
    """

    code: ErrorCode
    message: str
    retriable: bool
    retry_after_ms: int | None = None
    data: dict[str, Any] | None = None


class OrchestratorError(Exception):
    """Base of every error the orchestrator reports (see the module docstring for the tree).

    Args:
        message: human-readable sentence; identifiers also go in ``data``.
        data: machine-readable details (ids, fields, expected/actual values).
        retry_after_ms: when set, the caller may retry after this many milliseconds.
    """

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL
    http_status: ClassVar[int] = 500
    retriable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        data: dict[str, Any] | None = None,
        retry_after_ms: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.data = data
        self.retry_after_ms = retry_after_ms

    def envelope(self) -> ErrorEnvelope:
        """Return the wire form of this error."""
        return ErrorEnvelope(
            code=self.code,
            message=self.message,
            retriable=self.retriable,
            retry_after_ms=self.retry_after_ms,
            data=self.data,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code}: {self.message!r}, data={self.data!r})"


class InvalidParams(OrchestratorError):
    """The request is malformed or violates a field constraint (400)."""

    code = ErrorCode.INVALID_PARAMS
    http_status = 400


class InvalidToolArgs(InvalidParams):
    """Tool arguments do not validate against the tool's JSON Schema (400)."""

    code = ErrorCode.INVALID_TOOL_ARGS


class InvalidModel(InvalidParams):
    """The model id is not advertised by ``GET /v1/capabilities`` (400)."""

    code = ErrorCode.INVALID_MODEL


class ContextBudget(InvalidParams):
    """The prompt plus ``max_tokens`` does not fit the model context (400)."""

    code = ErrorCode.CONTEXT_BUDGET


class Unauthorized(OrchestratorError):
    """Missing or wrong bearer token (401)."""

    code = ErrorCode.UNAUTHORIZED
    http_status = 401


class BudgetExceeded(OrchestratorError):
    """A hard budget (tokens in/out, cost USD) would be or was crossed (402)."""

    code = ErrorCode.BUDGET_EXCEEDED
    http_status = 402


class PolicyDenied(OrchestratorError):
    """The Run's policy denies the model, tool, step type or operation (403)."""

    code = ErrorCode.POLICY_DENIED
    http_status = 403


class FsPolicyViolation(PolicyDenied):
    """An ``fs_op`` leaves the sandbox, the allow-list or the quota (403)."""

    code = ErrorCode.FS_POLICY_VIOLATION


class OriginNotAllowed(PolicyDenied):
    """A server without authentication refuses a request addressed to a host name that
    is not loopback (DNS rebinding) or a state change from another origin (403)."""

    code = ErrorCode.ORIGIN_NOT_ALLOWED


class UnsupportedMediaType(OrchestratorError):
    """A request body that is not ``application/json`` (415)."""

    code = ErrorCode.UNSUPPORTED_MEDIA_TYPE
    http_status = 415


class NotFound(OrchestratorError):
    """No such flow, run, step, pool or route (404)."""

    code = ErrorCode.NOT_FOUND
    http_status = 404


class Conflict(OrchestratorError):
    """The request conflicts with stored state, e.g. a reused client_token (409)."""

    code = ErrorCode.CONFLICT
    http_status = 409


class Nondeterminism(Conflict):
    """A replayed Step does not match its recording by type or input hash (409).

    ``data`` carries ``client_token``, ``field``, ``recorded_hash`` and ``submitted_hash``.
    """

    code = ErrorCode.NONDETERMINISM


class DeterminismInputsDiffer(Conflict):
    """``strict_replay`` refused before start: determinism inputs differ (409).

    ``data["fields"]`` lists each differing field with its recorded and current value.
    """

    code = ErrorCode.DETERMINISM_INPUTS_DIFFER

    def __init__(self, message: str, *, fields: dict[str, dict[str, Any]]) -> None:
        super().__init__(message, data={"fields": fields})
        self.fields = fields


class AdmissionReject(OrchestratorError):
    """The server will not admit more work now; retry after ``retry_after_ms`` (429)."""

    code = ErrorCode.ADMISSION_REJECT
    http_status = 429
    retriable = True


class QueueFull(AdmissionReject):
    """The pool's bounded queue is full (429)."""

    code = ErrorCode.QUEUE_FULL


class PoolUnready(OrchestratorError):
    """The pool exists but has no ready replica yet (503)."""

    code = ErrorCode.POOL_UNREADY
    http_status = 503
    retriable = True


class PoolUnavailable(OrchestratorError):
    """No pool can serve the request, or a pinned pool/replica is unusable (503)."""

    code = ErrorCode.POOL_UNAVAILABLE
    http_status = 503
    retriable = True


class CircuitOpen(OrchestratorError):
    """A circuit breaker guarding an external call is open (503)."""

    code = ErrorCode.CIRCUIT_OPEN
    http_status = 503
    retriable = True


class EngineError(OrchestratorError):
    """The inference engine failed or answered out of contract (502)."""

    code = ErrorCode.ENGINE_ERROR
    http_status = 502
    retriable = True


class Internal(OrchestratorError):
    """An unexpected server fault (500). Never raised on purpose for bad input."""

    code = ErrorCode.INTERNAL
    http_status = 500


class StreamError(OrchestratorError):
    """Base of the stream-only codes: they appear as ``error`` frames, never as statuses."""

    http_status = 500


class Cancelled(StreamError):
    """The Step or its Run was cancelled; nothing follows this frame."""

    code = ErrorCode.CANCELLED


class ReplayDiverged(StreamError):
    """``strict_replay`` produced a token that differs from the recording.

    Attributes mirror ``data``: ``index``, ``expected`` and ``actual`` (each ``{t, id}`` or
    ``None`` where the stream ended early), plus ``run_id`` and ``step_id``.
    """

    code = ErrorCode.REPLAY_DIVERGED

    def __init__(
        self,
        *,
        run_id: str,
        step_id: str,
        index: int,
        expected: dict[str, Any] | None,
        actual: dict[str, Any] | None,
    ) -> None:
        super().__init__(
            f"strict_replay diverged at token {index}",
            data={
                "run_id": run_id,
                "step_id": step_id,
                "index": index,
                "expected": expected,
                "actual": actual,
            },
        )
        self.run_id = run_id
        self.step_id = step_id
        self.index = index
        self.expected = expected
        self.actual = actual


class DeadlineExceeded(StreamError):
    """The Step or Run wall-clock budget (``max_wall_ms``) ran out."""

    code = ErrorCode.DEADLINE_EXCEEDED


class Interrupted(StreamError):
    """The Step was cut off: server restart, or an engine stream with no finish_reason."""

    code = ErrorCode.INTERRUPTED
    retriable = True


class ContractViolation(StreamError):
    """The model's output is not JSON, or does not validate against the Step's
    ``response_contract`` (or, for ``llm_plan``, the intents envelope) (NERVE-4013).

    ``data``: ``reason`` (``not_json``, ``schema`` or ``truncated``), ``errors`` (up to 20
    ``{path, message}``) and ``finish_reason``. Not retriable: the same inputs decode the
    same output; a retry is a new Step with other inputs.
    """

    code = ErrorCode.CONTRACT_VIOLATION


class OutputTooLarge(StreamError):
    """A value the Step would record is over the server's bound, or evaluating it went
    over its work budget (POLICY-3030, NERVE-4007). Nothing of it is recorded: the value
    is refused, never truncated.

    ``data``: ``field`` (the refused value, e.g. ``output`` or ``output.value``),
    ``reason`` (``size``, ``depth``, ``work`` or ``memory``) and the limit that was
    crossed: ``limit_bytes`` (``max_recorded_value_bytes``), ``limit_depth`` or
    ``limit_work`` (``max_gate_work``). Not retriable: the same inputs give the same
    value. Stream-only; its status, 413, is never sent (an oversized value refused before
    a Step exists is 400 ``INVALID_PARAMS`` naming the field).
    """

    code = ErrorCode.OUTPUT_TOO_LARGE
    http_status = 413


_BY_CODE: dict[ErrorCode, type[OrchestratorError]] = {
    cls.code: cls
    for cls in (
        InvalidParams, InvalidToolArgs, InvalidModel, ContextBudget, Unauthorized,
        BudgetExceeded, PolicyDenied, FsPolicyViolation, OriginNotAllowed,
        UnsupportedMediaType, NotFound, Conflict, Nondeterminism,
        AdmissionReject, QueueFull, PoolUnready, PoolUnavailable, CircuitOpen, EngineError,
        Internal, Cancelled, DeadlineExceeded, Interrupted, ContractViolation,
        OutputTooLarge,
    )
}


def error_from_envelope(env: ErrorEnvelope) -> OrchestratorError:
    """Rebuild the typed error for an envelope received over the wire (client side).

    Returns:
        An instance of the subclass that owns ``env.code``; ``data`` and
        ``retry_after_ms`` are kept as they were sent.
    """
    if env.code is ErrorCode.DETERMINISM_INPUTS_DIFFER:
        fields = (env.data or {}).get("fields", {})
        return DeterminismInputsDiffer(env.message, fields=fields)
    if env.code is ErrorCode.REPLAY_DIVERGED:
        d = env.data or {}
        return ReplayDiverged(
            run_id=d.get("run_id", ""),
            step_id=d.get("step_id", ""),
            index=int(d.get("index", -1)),
            expected=d.get("expected"),
            actual=d.get("actual"),
        )
    cls = _BY_CODE.get(env.code, Internal)
    return cls(env.message, data=env.data, retry_after_ms=env.retry_after_ms)
