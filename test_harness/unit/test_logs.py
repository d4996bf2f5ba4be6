"""Structured logs: the access line of every request, the Step transitions, the
correlation id the error message points at, and no secret (OBS-8020..OBS-8025)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import msgspec
import pytest

from orchestrator_core.config import ServerConfig
from test_harness.support import app_client, llm_step, parse_sse
from test_harness.tracing_support import captured_logs
from worker_adapters.base import ToolExecutorConfig
from worker_adapters.mock import MockEngine
from worker_adapters.tools import default_tool_executors

TOKEN = "tok-acme-5f1c9e0b7d"
WRONG = "tok-wrong-77aa01"
CARD = "4111-1111-1111-1111"


@pytest.fixture
def log_to() -> Iterator[Any]:
    """Configure the process's logging for a test (a format and the secrets), restore
    it afterwards."""
    with ExitStack() as stack:
        yield lambda fmt, secrets=(), level=logging.INFO: stack.enter_context(
            captured_logs(fmt, secrets, level))


def _tokens(cfg: ServerConfig, **changes: Any) -> ServerConfig:
    return msgspec.structs.replace(cfg, auth_tokens={TOKEN: "acme"}, **changes)


AUTH = {"Authorization": f"Bearer {TOKEN}"}


class TestAccessLog:
    """One line per request, with the correlation id the response carries."""

    def test_a_failing_request_is_found_in_the_json_log_by_its_correlation_id(
            self, mock_cfg: ServerConfig, log_to: Any) -> None:
        """[OBS-8021] [OBS-8024] A 401 with a wrong bearer token: its access line has
        the id, method, route template, status and duration; neither the presented nor
        the configured token is anywhere in the log."""
        cap = log_to("json", secrets=[TOKEN])
        with app_client(_tokens(mock_cfg)) as client:
            resp = client.get("/v1/runs/run_nope", headers={
                "Authorization": f"Bearer {WRONG}", "X-Correlation-Id": "cid-failing-1"})
            ok = client.get("/v1/capabilities", headers=AUTH)
        assert (resp.status_code, resp.headers["x-correlation-id"]) == (401, "cid-failing-1")
        (line,) = cap.where(correlation_id="cid-failing-1")
        assert isinstance(line.pop("duration_ms"), float)
        assert isinstance(line.pop("timestamp"), str)
        line.pop("trace_id", None)  # there when an earlier test installed an SDK provider
        assert line == {"event": "request", "level": "info", "logger": "orchestratord.access",
                        "correlation_id": "cid-failing-1", "method": "GET",
                        "route": "/v1/runs/{run_id}", "status": 401}
        (served,) = cap.where(correlation_id=ok.headers["x-correlation-id"])
        assert (served["status"], served["tenant"]) == (200, "acme")
        assert WRONG not in cap.text and TOKEN not in cap.text

    def test_an_unrouted_request_gets_a_line_and_a_new_id(
            self, mock_cfg: ServerConfig, log_to: Any) -> None:
        """[OBS-8021] A 404 for no route: a new UUID, echoed, logged without a route."""
        cap = log_to("json")
        with app_client(mock_cfg) as client:
            resp = client.get("/no/such/route", headers={"X-Correlation-Id": "bad id!"})
        cid = resp.headers["x-correlation-id"]
        assert resp.status_code == 404 and cid != "bad id!" and len(cid) == 36
        (line,) = cap.where(correlation_id=cid)
        assert (line["event"], line["status"], "route" in line) == ("request", 404, False)

    def test_logfmt_is_one_line_per_event(self, mock_cfg: ServerConfig, log_to: Any) -> None:
        """[OBS-8020] ``--log-format logfmt``: ``timestamp level event`` then the fields."""
        cap = log_to("logfmt")
        with app_client(mock_cfg) as client:
            resp = client.get("/health", headers={"X-Correlation-Id": "cid-logfmt"})
        (line,) = [ln for ln in cap.text.splitlines() if "cid-logfmt" in ln]
        assert line.startswith("timestamp=")
        assert " level=info event=request " in line
        assert 'route=/health status=200' in line and resp.status_code == 200


class _Broken(MockEngine):
    """A mock engine whose prompt counting fails unexpectedly."""

    def prepare(self, *, prompt: str | None, messages: Any) -> Any:
        """Fail as a bug would."""
        raise RuntimeError("tokenizer exploded")


class TestInternalErrors:
    """The hint in an ``INTERNAL`` error's message is true."""

    def test_the_traceback_is_logged_with_the_responses_correlation_id(
            self, mock_cfg: ServerConfig, log_to: Any) -> None:
        """[OBS-8025] A 500 says "see the server log with this X-Correlation-Id", and the
        log has the traceback under that id."""
        cap = log_to("json")
        with app_client(mock_cfg, engine_factory=lambda pc, i: _Broken()) as client:
            flow = client.post("/v1/flows", json={"ast_ir": {}}).json()
            run_id = client.post(f"/v1/flows/{flow['flow_id']}/runs", json={}).json()[
                "run_id"]
            resp = client.post(f"/v1/runs/{run_id}/steps", json=llm_step("x1"))
        cid = resp.headers["x-correlation-id"]
        assert (resp.status_code, resp.json()["message"]) == (
            500, "internal error; see the server log with this X-Correlation-Id")
        (error,) = cap.where(correlation_id=cid, level="error")
        assert error["event"] == "unhandled error"
        assert "RuntimeError: tokenizer exploded" in error["exception"]
        assert [r["status"] for r in cap.where(correlation_id=cid, event="request")] == [500]


class TestStepTransitions:
    """Admitted, running, terminal: one line each, with the ids of the Step."""

    def test_each_transition_carries_the_admitting_requests_ids(
            self, mock_cfg: ServerConfig, log_to: Any) -> None:
        """[OBS-8022] [OBS-8023] [OBS-8024] An ``llm_call`` under a redaction policy and a
        failing ``tool_call``: correlation id, tenant, run and step ids on every line;
        the failure's status and code; the redacted text nowhere (at ``debug``, every
        transition)."""
        import sys

        cap = log_to("json", secrets=[TOKEN], level=logging.DEBUG)
        tools = {**default_tool_executors(), "fails": ToolExecutorConfig(
            kind="argv", argv=[sys.executable, "-c", "import sys; sys.exit(3)"])}
        with app_client(_tokens(mock_cfg, tools=tools)) as client:
            flow = client.post("/v1/flows", headers=AUTH, json={"ast_ir": {}, "tools": [
                {"name": "bad", "executor": "fails", "parameters": {"type": "object"}}]}
                               ).json()
            run_id = client.post(f"/v1/flows/{flow['flow_id']}/runs", headers=AUTH, json={
                "policy": {"redact": [r"\d{4}-\d{4}-\d{4}-\d{4}"]}}).json()["run_id"]
            steps = []
            for cid, body in (("cid-llm", llm_step("l1", prompt=f"card {CARD} ok",
                                                   max_tokens=3)),
                              ("cid-tool", {"type": "tool_call", "client_token": "t1",
                                            "input": {"tool": "bad", "args": {}}})):
                resp = client.post(f"/v1/runs/{run_id}/steps", json=body,
                                   headers={**AUTH, "X-Correlation-Id": cid})
                assert resp.status_code == 201, resp.text
                steps.append(resp.json()["step_id"])
                with client.stream("GET", f"/v1/steps/{steps[-1]}/stream",
                                   headers=AUTH) as s:
                    parse_sse(b"".join(s.iter_bytes()))
        keep = ("event", "level", "correlation_id", "tenant", "run_id", "step_id",
                "step_type", "transition", "status", "error_code")
        lines = [{k: r[k] for k in keep if k in r}
                 for r in cap.records() if r.get("logger") == "orchestrator.steps"]
        ids = {"tenant": "acme", "run_id": run_id}
        assert lines == [
            {"event": "step admitted", "level": "debug", "correlation_id": "cid-llm", **ids,
             "step_id": steps[0], "step_type": "llm_call", "transition": "admitted"},
            {"event": "step running", "level": "debug", "correlation_id": "cid-llm", **ids,
             "step_id": steps[0], "step_type": "llm_call", "transition": "running"},
            {"event": "step finished", "level": "info", "correlation_id": "cid-llm", **ids,
             "step_id": steps[0], "step_type": "llm_call", "transition": "terminal",
             "status": "succeeded"},
            {"event": "step admitted", "level": "debug", "correlation_id": "cid-tool", **ids,
             "step_id": steps[1], "step_type": "tool_call", "transition": "admitted"},
            {"event": "step running", "level": "debug", "correlation_id": "cid-tool", **ids,
             "step_id": steps[1], "step_type": "tool_call", "transition": "running"},
            {"event": "step finished", "level": "warning", "correlation_id": "cid-tool",
             **ids, "step_id": steps[1], "step_type": "tool_call", "transition": "terminal",
             "status": "failed", "error_code": "ENGINE_ERROR"}]
        assert CARD not in cap.text and TOKEN not in cap.text


class TestStepLinesAtInfo:
    def test_at_info_a_step_logs_its_terminal_line_only(
            self, mock_cfg: ServerConfig, log_to: Any) -> None:
        """[OBS-8023] At the default level a succeeded ``llm_call`` writes one
        ``orchestrator.steps`` line, ``step finished``; admitted and running are
        ``debug``."""
        cap = log_to("json")
        with app_client(mock_cfg) as client:
            flow = client.post("/v1/flows", json={"ast_ir": {}}).json()
            run_id = client.post(f"/v1/flows/{flow['flow_id']}/runs", json={}).json()["run_id"]
            resp = client.post(f"/v1/runs/{run_id}/steps", json=llm_step("s-info", "hi"))
            step_id = resp.json()["step_id"]
            with client.stream("GET", f"/v1/steps/{step_id}/stream") as s:
                parse_sse(b"".join(s.iter_bytes()))
        lines = [(r["event"], r["level"], r.get("status"))
                 for r in cap.records() if r.get("logger") == "orchestrator.steps"]
        assert lines == [("step finished", "info", "succeeded")]


class TestScrubbing:
    """Secrets are replaced in every field, the exception text included."""

    def test_a_bearer_credential_in_an_exception_is_redacted(self, log_to: Any) -> None:
        """[OBS-8024] Whatever follows ``Bearer`` and every configured token, anywhere."""
        import logging

        cap = log_to("json", secrets=[TOKEN])
        try:
            raise ValueError(f"upstream refused Authorization: Bearer opaque.cred-9 ({TOKEN})")
        except ValueError:
            logging.getLogger("orchestratord").exception("call failed: bearer xyz-1")
        (line,) = cap.records()
        assert line["event"] == "call failed: bearer [REDACTED]"
        assert line["exception"].endswith(
            "ValueError: upstream refused Authorization: Bearer [REDACTED] ([REDACTED])")
