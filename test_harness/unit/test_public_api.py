"""The public API of the contracts package is pinned; the OpenAPI file is current."""

from __future__ import annotations

import pathlib

import contracts
from orchestratord.openapi import openapi_json

EXPECTED = {
    "AdmissionReject", "BudgetExceeded", "BudgetUsage", "Budgets", "Cancelled",
    "Capabilities", "ChatMessage", "CircuitOpen", "Conflict", "ContextBudget",
    "DURABLE_FRAMES", "DeadlineExceeded", "EffectEndData", "FsOp", "FsOpInput", "FsOpSubmit",
    "ToolCallInput", "ToolCallSubmit", "BUILTIN_FACT_SCHEMA", "Fact", "FactCreate",
    "GateEvalInput", "GateEvalSubmit", "Checkpoint", "CheckpointCreate", "CheckpointInput",
    "CheckpointSubmit", "DeterminismInputsDiffer", "EndData", "ContractViolation",
    "LlmPlanInput", "LlmPlanSubmit", "ToolSuggestData",
    "EngineError", "EngineInfo", "ErrorCode", "ErrorData", "ErrorEnvelope", "Flow",
    "FlowCreate",
    "FlowCreated", "FrameType", "FsPolicy", "FsPolicyViolation", "Internal", "Interrupted",
    "InvalidModel", "InvalidParams", "InvalidToolArgs", "LlmCallInput", "LlmCallSubmit",
    "MetricsData", "ModelCapability", "ModelInfo", "NarrationData", "Nondeterminism",
    "NotFound", "OrchestratorError", "OutputTooLarge", "Placement", "PlacementAffinity",
    "PlacementAuto", "PlacementDecision", "PlacementPin", "Policy", "PolicyDenied", "PoolInfo",
    "PoolPolicy",
    "PoolUnavailable", "PoolUnready", "Provenance", "QueueFull", "RenderedPrompt",
    "ReplayDiverged",
    "ReplicaHealth", "ReplicaInfo", "Run", "RunCreate", "RunMode", "RunStatus",
    "SamplingParams", "StartedData", "Step", "StepStatus", "StepSubmit", "StepType",
    "StreamError", "TERMINAL_FRAMES", "TokenData", "ToolSchema", "Unauthorized",
    "OriginNotAllowed", "UnsupportedMediaType",
    "error_from_envelope", "sse_comment", "sse_frame",
    "BreakerState", "CheckpointData", "DurablePayload", "EphemeralPayload", "EscalationData",
    "FRAME_PAYLOADS", "FRAME_TYPE_OF", "FramePayload", "TerminalPayload",
    "decode_frame_data", "frame_type_of", "CancelAccepted", "PriceInfo", "ToolExecutorInfo",
    "RUN_END_EVENT", "RunClose", "RunEndData", "RunFrame", "RunSummary", "CacheMode",
    "ProvisionModel", "ProvisionRequest",
}


def test_contracts_exports_exactly_the_documented_names() -> None:
    """Adding or removing a public name is a deliberate change to this list."""
    assert set(contracts.__all__) == EXPECTED
    assert all(hasattr(contracts, name) for name in EXPECTED)


def test_the_committed_openapi_document_matches_the_served_one() -> None:
    """Regenerate with ``orchestratord openapi > contracts/openapi.json``."""
    committed = pathlib.Path(contracts.__file__).parent / "openapi.json"
    assert committed.read_text() == openapi_json()
