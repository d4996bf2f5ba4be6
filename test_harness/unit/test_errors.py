"""The error tree and its wire form (NERVE-4030)."""

from __future__ import annotations

import msgspec
import pytest

from contracts import errors
from orchestratord.app import error_handler

STATUS = {
    errors.InvalidParams: 400, errors.InvalidToolArgs: 400, errors.InvalidModel: 400,
    errors.ContextBudget: 400, errors.Unauthorized: 401, errors.BudgetExceeded: 402,
    errors.PolicyDenied: 403, errors.FsPolicyViolation: 403, errors.OriginNotAllowed: 403,
    errors.UnsupportedMediaType: 415, errors.NotFound: 404,
    errors.Conflict: 409, errors.Nondeterminism: 409, errors.AdmissionReject: 429,
    errors.QueueFull: 429, errors.PoolUnready: 503, errors.PoolUnavailable: 503,
    errors.CircuitOpen: 503, errors.EngineError: 502, errors.Internal: 500,
}


class TestErrorTree:
    """Each subclass fixes its code and its HTTP status."""

    @pytest.mark.parametrize(("cls", "status"), list(STATUS.items()))
    def test_status_and_code(self, cls: type[errors.OrchestratorError], status: int) -> None:
        """Code names the class; status is the documented one."""
        err = cls("boom", data={"x": 1})
        assert (err.http_status, err.envelope().code) == (status, cls.code)
        assert isinstance(err, errors.OrchestratorError)

    def test_every_code_has_an_owner(self) -> None:
        """The closed vocabulary is fully covered by the tree."""
        owners = {c.code for c in STATUS} | {
            errors.DeterminismInputsDiffer.code, errors.Cancelled.code, errors.ReplayDiverged.code,
            errors.DeadlineExceeded.code, errors.Interrupted.code, errors.ContractViolation.code,
            errors.OutputTooLarge.code}
        assert owners == set(errors.ErrorCode)

    def test_output_too_large_is_a_stream_only_refusal(self) -> None:
        """[POLICY-3030] OUTPUT_TOO_LARGE is a stream error, not retriable, 413 on paper."""
        err = errors.OutputTooLarge("too big", data={"field": "output", "reason": "size",
                                                     "limit_bytes": 1024})
        assert isinstance(err, errors.StreamError)
        assert (err.http_status, err.retriable) == (413, False)
        back = errors.error_from_envelope(err.envelope())
        assert type(back) is errors.OutputTooLarge
        assert back.data == {"field": "output", "reason": "size", "limit_bytes": 1024}

    def test_envelope_roundtrip_rebuilds_the_typed_error(self) -> None:
        """A client gets the same subclass, data and retry hint back."""
        err = errors.QueueFull("full", retry_after_ms=1500, data={"pool_id": "p"})
        wire = msgspec.json.encode(err.envelope())
        assert msgspec.json.decode(wire) == {
            "code": "QUEUE_FULL", "message": "full", "retriable": True,
            "retry_after_ms": 1500, "data": {"pool_id": "p"}}
        back = errors.error_from_envelope(msgspec.json.decode(wire, type=errors.ErrorEnvelope))
        assert type(back) is errors.QueueFull and back.retry_after_ms == 1500

    def test_divergence_keeps_its_identifiers_as_attributes(self) -> None:
        """Identifiers are attributes, not only words in the message."""
        env = errors.ReplayDiverged(run_id="r", step_id="s", index=3, expected={"t": "a", "id": 1},
                               actual={"t": "b", "id": 2}).envelope()
        back = errors.error_from_envelope(env)
        assert isinstance(back, errors.ReplayDiverged)
        assert (back.run_id, back.step_id, back.index, back.actual) == (
            "r", "s", 3, {"t": "b", "id": 2})


class TestErrorHandler:
    """The one handler writes the envelope and the retry headers."""

    def test_retry_after_is_whole_seconds_rounded_up(self) -> None:
        """1.5 s becomes ``Retry-After: 2`` and ``X-Backoff-Ms: 1500``."""
        resp = error_handler(None, errors.QueueFull("full", retry_after_ms=1500))  # type: ignore[arg-type]
        assert resp.status_code == 429
        assert (resp.headers["Retry-After"], resp.headers["X-Backoff-Ms"]) == ("2", "1500")

    def test_unexpected_exceptions_become_internal_without_details(self) -> None:
        """A bug is a 500 INTERNAL; its text does not leak."""
        resp = error_handler(None, RuntimeError("secret path /x"))  # type: ignore[arg-type]
        body = msgspec.json.decode(resp.content)
        assert (resp.status_code, body["code"]) == (500, "INTERNAL")
        assert "secret" not in body["message"]
