"""Spans and transition log lines of Steps, engine calls and effects (OBS-8010..OBS-8015,
OBS-8023).

Only the OpenTelemetry *API* is used here: until the server process installs an SDK
tracer provider (``orchestratord.telemetry``, from the standard ``OTEL_*`` variables),
every span is a non-recording no-op, and nothing is exported.

* A Step span (``step <type>``, kind INTERNAL) starts when the Step is admitted, in the
  admitting request's context, so it is a child of that request's server span although
  the Step runs in a background task; it ends with the terminal frame and then carries
  the provenance block (OBS-8011).
* An engine call span (``text_completion <model>``, kind CLIENT) is a child of the Step
  span with the GenAI semantic-convention attributes: operation name, provider, model,
  sampling parameters, tokens in and out, finish reason (OBS-8012). It is the current
  span while the engine streams, so an instrumented HTTP client propagates it to the
  engine in ``traceparent`` (OBS-8014).
* An effect span (``execute_tool <executor>`` for ``tool_call``, ``<type> <executor>``
  for ``fs_op``, ``gate_eval`` and ``checkpoint``) is a child of the Step span (OBS-8013).

The Step transitions (admitted, running, terminal) are one log line each on the
``orchestrator.steps`` logger, with ``run_id``, ``step_id`` and the Step's type, mode,
status and error code as fields (OBS-8023); nothing of the Step's input or output is
logged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import structlog
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

if TYPE_CHECKING:
    from contracts.events import Provenance
    from worker_adapters.base import CompletionRequest

__all__ = ["EngineCall", "effect_span", "engine_call", "step_admitted", "step_bound",
           "step_finished", "step_running", "step_served"]

log = logging.getLogger("orchestrator.steps")
_tracer = trace.get_tracer("orchestrator_core")
"""A proxy: it follows whatever tracer provider the process installs, and is a no-op
until one is installed."""

_PROVENANCE_PREFIX = "orchestrator.provenance."


def _set_provenance(span: Span, prov: Provenance) -> None:
    """Every field of the block that is present, as ``orchestrator.provenance.<field>``."""
    for name in prov.__struct_fields__:
        value = getattr(prov, name)
        if value is not None:
            span.set_attribute(_PROVENANCE_PREFIX + name, value)


def step_admitted(step_id: str, run_id: str, step_type: str, mode: str) -> Span:
    """Start the Step's span in the current (request) context and log ``admitted`` (at
    ``debug``: OBS-8023).

    Args:
        step_id, run_id: the Step and its Run.
        step_type: the wire type (``llm_call``, ``tool_call``, ...).
        mode: the Run's mode (``record``, ``replay``, ``strict_replay``).

    Returns:
        The span, not current anywhere yet; :func:`step_bound` makes it current in the
        Step's task, :func:`step_finished` ends it (OBS-8011).
    """
    span = _tracer.start_span(f"step {step_type}", kind=SpanKind.INTERNAL, attributes={
        "orchestrator.run.id": run_id, "orchestrator.step.id": step_id,
        "orchestrator.step.type": step_type, "orchestrator.run.mode": mode})
    log.debug("step admitted", extra={"run_id": run_id, "step_id": step_id,
                                     "step_type": step_type, "mode": mode,
                                     "transition": "admitted"})
    return span


@contextmanager
def step_bound(span: Span | None, step_id: str, run_id: str) -> Iterator[None]:
    """In a Step's task: the Step span is current and every log line carries ``run_id``
    and ``step_id`` (structlog context variables, local to the task) (OBS-8022).

    :func:`step_finished` ends the span with the terminal status; one still open when
    the block is left (the task was torn down before a terminal frame) is ended here.
    """
    structlog.contextvars.bind_contextvars(run_id=run_id, step_id=step_id)
    live = span if span is not None else trace.INVALID_SPAN
    try:
        with trace.use_span(live, end_on_exit=False, record_exception=False,
                            set_status_on_exception=False):
            yield
    finally:
        if live.is_recording():
            live.end()


def step_served(step_id: str, run_id: str, step_type: str, mode: str, status: str) -> None:
    """Log a Step stored already finished, serving a recording or a parent's Step: its
    one transition (admitted and terminal at once; it has no task and no span of its
    own: the request span covers it) (OBS-8023)."""
    log.info("step served", extra={"run_id": run_id, "step_id": step_id,
                                   "step_type": step_type, "mode": mode,
                                   "transition": "served", "status": status})


def step_running(step_id: str, run_id: str, step_type: str) -> None:
    """Log the Step's ``running`` transition (its ``started`` frame) at ``debug``
    (OBS-8023)."""
    log.debug("step running", extra={"run_id": run_id, "step_id": step_id,
                                    "step_type": step_type, "transition": "running"})


def step_finished(span: Span | None, step_id: str, run_id: str, step_type: str,
                  status: str, prov: Provenance, error_code: str | None = None) -> None:
    """Log the terminal transition and end the Step span with the provenance block.

    Args:
        span: the Step's span (None: nothing to end).
        step_id, run_id, step_type: the Step.
        status: the terminal status (``succeeded``, ``failed``, ``cancelled``, ...).
        prov: the provenance block of the terminal frame (OBS-8011).
        error_code: the ``ErrorCode`` of an ``error`` frame; None for ``end``.
    """
    extra: dict[str, Any] = {"run_id": run_id, "step_id": step_id, "step_type": step_type,
                             "transition": "terminal", "status": status}
    if error_code is not None:
        extra["error_code"] = error_code
    log.log(logging.WARNING if error_code is not None else logging.INFO,
            "step finished", extra=extra)
    if span is None or not span.is_recording():
        return
    _set_provenance(span, prov)
    span.set_attribute("orchestrator.step.status", status)
    if error_code is not None:
        span.set_attribute("error.type", error_code)
        span.set_status(Status(StatusCode.ERROR, error_code))
    span.end()


class EngineCall:
    """The live engine-call span; :meth:`usage` records what the engine consumed
    (OBS-8012)."""

    def __init__(self, span: Span) -> None:
        self.span = span

    def usage(self, tokens_in: int, tokens_out: int, finish_reason: str | None) -> None:
        """Set ``gen_ai.usage.input_tokens`` / ``output_tokens`` (tokens) and
        ``gen_ai.response.finish_reasons`` (a one-element list; none when None) (OBS-8012)."""
        if not self.span.is_recording():
            return
        self.span.set_attribute("gen_ai.usage.input_tokens", tokens_in)
        self.span.set_attribute("gen_ai.usage.output_tokens", tokens_out)
        if finish_reason is not None:
            self.span.set_attribute("gen_ai.response.finish_reasons", [finish_reason])


@contextmanager
def engine_call(model: str, engine: str | None, request: CompletionRequest,
                replica_id: str) -> Iterator[EngineCall]:
    """The span of one completion on an engine replica, current while it streams
    (OBS-8012, OBS-8014).

    Args:
        model: the opaque model id the Step asked for (``gen_ai.request.model``).
        engine: the engine's name, ``gen_ai.provider.name`` (``llamacpp``, ``mock``,
            ``openai_http:<dialect>``).
        request: the completion request (sampling parameters, max tokens, seed).
        replica_id: the replica that serves it.

    Yields:
        An :class:`EngineCall` to record the usage on. An exception leaving the block is
        recorded on the span, whose status becomes ERROR with ``error.type``.
    """
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "text_completion",
        "gen_ai.provider.name": engine or "unknown",
        "gen_ai.request.model": model,
        "gen_ai.request.max_tokens": request.max_tokens,
        "gen_ai.request.temperature": request.temperature,
        "gen_ai.request.top_p": request.top_p,
        "gen_ai.request.top_k": request.top_k,
        "gen_ai.request.seed": request.seed,
        "orchestrator.replica.id": replica_id,
    }
    with _tracer.start_as_current_span(f"text_completion {model}", kind=SpanKind.CLIENT,
                                       attributes=attributes) as span:
        try:
            yield EngineCall(span)
        except Exception as exc:
            span.set_attribute("error.type", getattr(getattr(exc, "code", None), "value",
                                                     type(exc).__qualname__))
            raise


@contextmanager
def effect_span(step_type: str, executor: str) -> Iterator[Span]:
    """The span of one effect: a tool execution (GenAI ``execute_tool``), an FS
    operation, a gate evaluation or a checkpoint (OBS-8013).

    Yields:
        The span, current for the block; an exception leaving it sets ``error.type``.
    """
    if step_type == "tool_call":
        name = f"execute_tool {executor}"
        attributes = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": executor}
    else:
        name = f"{step_type} {executor}"
        attributes = {"orchestrator.effect.executor": executor}
    with _tracer.start_as_current_span(name, kind=SpanKind.INTERNAL,
                                       attributes=attributes) as span:
        try:
            yield span
        except Exception as exc:
            span.set_attribute("error.type", getattr(getattr(exc, "code", None), "value",
                                                     type(exc).__qualname__))
            raise
