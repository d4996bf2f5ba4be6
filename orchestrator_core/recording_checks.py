"""What a recording must hold before it is imported, beyond its hashes (REC-7009,
specs/95_recordings.md).

The hashes prove a file is the one exported, not that its exporter was honest: an import
checks every value as the routes that made it would have. The Run's body is a valid
``RunCreate`` (its policy compiles on RE2, its ``fs_policy`` stays in the importing
tenant's directories), the Flow's tools and fact schemas pass the checks of ``POST
/v1/flows``, each Step is a valid submission of a known type, with a finished status,
a valid placement, provenance and error; every refusal names its line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from contracts.errors import ErrorEnvelope, InvalidParams, OrchestratorError
from contracts.events import Provenance
from contracts.flows import FlowCreate
from contracts.runs import FsPolicy, Placement, RunCreate, RunStatus
from contracts.steps import StepStatus, StepSubmit
from orchestrator_core.facts import check_fact_schemas
from orchestrator_core.policy import validate_policy
from orchestrator_core.recordings import Recording
from orchestrator_core.steps.tool_call import check_tool_schemas

__all__ = ["check_recording"]


def _refuse(line: int, field: str, why: str | Exception) -> InvalidParams:
    message = why.message if isinstance(why, OrchestratorError) else str(why)
    return InvalidParams(f"recording line {line}: {field}: {message}",
                         data={"line": line, "field": field, "reason": "invalid"})


def _convert(line: int, field: str, value: Any, kind: Any) -> Any:
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as exc:
        raise _refuse(line, field, exc) from None


def check_recording(rec: Recording, check_fs_policy: Callable[[FsPolicy], None]) -> None:
    """Refuse a recording whose values the routes that made them would have refused
    [REC-7009].

    Args:
        rec: a recording whose hashes were checked.
        check_fs_policy: the importing tenant's check of a Run's ``fs_policy`` (it raises
            ``FsPolicyViolation`` or ``InvalidParams``).

    Raises:
        InvalidParams: ``data = {"line": n, "field": ..., "reason": "invalid"}``.
    """
    run = rec.header.run
    body = _convert(1, "run.body", run.body, RunCreate)
    if run.status not in (RunStatus.ACTIVE.value, RunStatus.CANCELLED.value):
        raise _refuse(1, "run.status", f"{run.status[:32]!r} is not a run status")
    try:
        validate_policy(body.policy)
        check_fs_policy(body.fs_policy)
    except OrchestratorError as err:
        raise _refuse(1, "run.body", err) from None
    flow = _convert(2, "content", {**rec.flow.content, "labels": rec.flow.labels or {}},
                    FlowCreate)
    try:
        for i, tool in enumerate(flow.tools):
            check_tool_schemas(tool, i)
        check_fact_schemas(flow.config)
    except OrchestratorError as err:
        raise _refuse(2, "content", err) from None
    for n, line in enumerate(rec.steps, 3):
        s = line.step
        _convert(n, "step.input", {"type": s.type, "client_token": s.client_token,
                                   "input": s.input}, StepSubmit)
        if s.status not in {t.value for t in StepStatus} or not StepStatus(s.status).terminal:
            raise _refuse(n, "step.status", f"{s.status[:32]!r} is not a finished status")
        if (line.frames[-1][1] == "end") != (s.status == StepStatus.SUCCEEDED.value):
            raise _refuse(n, "step.status", "the status disagrees with the terminal frame")
        for field, value, kind in (("step.placement", s.placement, Placement),
                                   ("step.provenance", s.provenance, Provenance),
                                   ("step.error", s.error, ErrorEnvelope)):
            if value is not None:
                _convert(n, field, value, kind)
