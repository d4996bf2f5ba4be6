"""The served OpenAPI document tells the truth about errors, streams and auth (NERVE-4033)."""

from __future__ import annotations

import json
from typing import Any

from orchestratord.openapi import openapi_json

DOC: dict[str, Any] = json.loads(openapi_json())
ENVELOPE = {"$ref": "#/components/schemas/ErrorEnvelope"}


def _op(method: str, path: str) -> dict[str, Any]:
    op: dict[str, Any] = DOC["paths"][path][method]
    return op


class TestOpenApiDocument:
    """What contracts/openapi.json documents."""

    def test_submit_step_documents_every_status(self) -> None:
        """[NERVE-4033] Submitting a Step documents its successes and every error status."""
        assert sorted(_op("post", "/v1/runs/{run_id}/steps")["responses"]) == [
            "200", "201", "400", "401", "402", "403", "404", "409", "415", "429", "502",
            "503"]

    def test_the_navigation_lists_document_their_parameters_and_statuses(self) -> None:
        """[NERVE-4033] [NERVE-4061] The three lists name their query parameters, a 400
        for a bad page request, and a 404 where they take a Flow or a Run."""
        found = {path: (sorted(_op("get", path)["responses"]),
                        [p["name"] for p in _op("get", path)["parameters"] if p["in"] == "query"])
                 for path in ("/v1/flows", "/v1/flows/{flow_id}/runs", "/v1/runs/{run_id}/steps")}
        assert found == {
            "/v1/flows": (["200", "400", "401", "403"], ["limit", "after"]),
            "/v1/flows/{flow_id}/runs": (["200", "400", "401", "403", "404"],
                                         ["mode", "status", "label", "limit", "after"]),
            "/v1/runs/{run_id}/steps": (["200", "400", "401", "403", "404"],
                                        ["limit", "after"])}

    def test_errors_are_the_envelope(self) -> None:
        """[NERVE-4033] [OAI-6005] Every error response of every operation is the flat
        envelope, except the OpenAI facade's, which are OpenAI's error body."""
        def shapes(facade: bool) -> set[str]:
            return {json.dumps(resp["content"]["application/json"]["schema"]["allOf"][0])
                    for path, item in DOC["paths"].items() for op in item.values()
                    for status, resp in op["responses"].items()
                    if status[0] in "45" and ("/openai/v1/" in path) == facade}
        assert shapes(False) == {json.dumps(ENVELOPE)}
        assert shapes(True) == {json.dumps({"$ref": "#/components/schemas/OaiErrorBody"})}

    def test_the_facade_documents_its_routes_and_statuses(self) -> None:
        """[OAI-6000] [OAI-6005] The facade's three routes are documented; a chat call
        answers a ChatCompletion and every status the SDK maps."""
        assert sorted(p for p in DOC["paths"] if "/openai/" in p) == [
            "/v1/runs/{run_id}/openai/v1/chat/completions",
            "/v1/runs/{run_id}/openai/v1/completions", "/v1/runs/{run_id}/openai/v1/models"]
        op = _op("post", "/v1/runs/{run_id}/openai/v1/chat/completions")
        assert sorted(op["responses"]) == ["200", "400", "401", "403", "404", "409", "415",
                                           "422", "429", "502", "503", "504"]
        assert op["responses"]["200"]["content"]["application/json"]["schema"] == \
            {"$ref": "#/components/schemas/ChatCompletion"}
        assert op["requestBody"]["content"]["application/json"]["schema"] == \
            {"$ref": "#/components/schemas/ChatCompletionRequest"}

    def test_429_carries_backoff_headers(self) -> None:
        """[NERVE-4033] A 429 documents Retry-After and X-Backoff-Ms."""
        headers = _op("post", "/v1/runs/{run_id}/steps")["responses"]["429"]["headers"]
        assert sorted(headers) == ["Retry-After", "X-Backoff-Ms", "X-Correlation-Id"]

    def test_step_stream_is_the_frame_union(self) -> None:
        """[NERVE-4033] The Step stream answers SseFrame events and takes Last-Event-ID."""
        op = _op("get", "/v1/steps/{step_id}/stream")
        assert op["responses"]["200"]["content"] == {
            "text/event-stream": {"schema": {"$ref": "#/components/schemas/SseFrame"}}}
        assert sorted(DOC["components"]["schemas"]["SseFrame"]["discriminator"]["mapping"]) == [
            "checkpoint", "end", "error", "escalation", "fact", "metrics", "narration",
            "started", "token", "tool_suggest"]
        assert [p["name"] for p in op["parameters"] if p["in"] == "header"] == [
            "X-Correlation-Id", "Last-Event-ID"]

    def test_the_stream_ticket_route_and_parameter_are_documented(self) -> None:
        """[NERVE-4054] The ticket route answers a StreamTicket (401, 403, 404 besides)
        and the Step stream takes an optional ``ticket`` query parameter."""
        op = _op("post", "/v1/steps/{step_id}/stream-ticket")
        assert sorted(op["responses"]) == ["200", "401", "403", "404"]
        assert op["responses"]["200"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/StreamTicket"}
        assert sorted(DOC["components"]["schemas"]["StreamTicket"]["properties"]) == [
            "expires_in_ms", "step_id", "ticket"]
        assert [(p["name"], p["required"]) for p in
                _op("get", "/v1/steps/{step_id}/stream")["parameters"]
                if p["in"] == "query"] == [("ticket", False)]

    def test_step_stream_documents_204_after_the_terminal_frame(self) -> None:
        """[STREAM-2012] The Step stream documents 204 for a re-read at or after its
        terminal frame; the Run's fact stream does not."""
        assert sorted(_op("get", "/v1/steps/{step_id}/stream")["responses"]) == [
            "200", "204", "400", "401", "403", "404"]
        assert "204" not in _op("get", "/v1/runs/{run_id}/facts/stream")["responses"]

    def test_bearer_scheme_with_public_probes(self) -> None:
        """[NERVE-4033] Bearer auth is global; /health and /ready declare no security."""
        assert DOC["security"] == [{"bearerAuth": []}]
        assert DOC["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
        assert _op("get", "/health")["security"] == []
        assert _op("get", "/ready")["security"] == []
        assert "401" not in _op("get", "/health")["responses"]
