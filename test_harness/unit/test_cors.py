"""CORS for the operator's allowed origins, and only for them (NERVE-4053)."""

from __future__ import annotations

from typing import Any

import msgspec

from orchestrator_core.config import ServerConfig
from test_harness.support import app_client

PAGE = "http://app.example:5173"
EXPOSED = ("X-Step-Id, Location, X-Budget-Tokens-In-Remaining, X-Budget-Tokens-Out-Remaining, "
           "X-Budget-Cost-Usd-Remaining, X-Budget-Wall-Ms-Remaining, Retry-After, "
           "X-Backoff-Ms, X-Correlation-Id")
PREFLIGHT = {"Origin": PAGE, "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization, content-type"}


def _cors(headers: Any) -> dict[str, str]:
    """The response's CORS headers (and Vary), lower-case names."""
    return {k: v for k, v in headers.items()
            if k.startswith("access-control-") or k == "vary"}


def _with(cfg: ServerConfig, **changes: Any) -> ServerConfig:
    return msgspec.structs.replace(cfg, **changes)


class TestCors:
    """Pages on an allowed origin may call the API; any other origin gets no CORS
    header [NERVE-4053]."""

    def test_an_allowed_origin_gets_its_own_origin_and_the_exposed_headers(
            self, mock_cfg: ServerConfig) -> None:
        """A GET from an allowed origin (a bearer-token server) answers with that exact
        origin, ``Vary: Origin`` and the exposed headers; its 401 carries them too."""
        cfg = _with(mock_cfg, allowed_origins=[PAGE], auth_tokens={"tok": "alpha"})
        with app_client(cfg) as c:
            ok = c.get("/v1/pools", headers={"Origin": PAGE, "Authorization": "Bearer tok"})
            denied = c.get("/v1/pools", headers={"Origin": PAGE})
        expected = {"access-control-allow-origin": PAGE, "vary": "Origin",
                    "access-control-expose-headers": EXPOSED}
        assert (ok.status_code, _cors(ok.headers)) == (200, expected)
        assert (denied.status_code, _cors(denied.headers)) == (401, expected)

    def test_a_preflight_from_an_allowed_origin_is_204_without_a_token(
            self, mock_cfg: ServerConfig) -> None:
        """The preflight needs no token and grants GET/POST and the four request
        headers."""
        cfg = _with(mock_cfg, allowed_origins=[PAGE], auth_tokens={"tok": "alpha"})
        with app_client(cfg) as c:
            resp = c.options("/v1/runs/r-1/steps", headers=PREFLIGHT)
        assert (resp.status_code, resp.content, _cors(resp.headers)) == (204, b"", {
            "access-control-allow-origin": PAGE, "vary": "Origin",
            "access-control-allow-methods": "GET, POST",
            "access-control-allow-headers":
                "Authorization, Content-Type, Last-Event-ID, X-Correlation-Id",
            "access-control-max-age": "600"})

    def test_another_origin_gets_no_cors_header(self, mock_cfg: ServerConfig) -> None:
        """An origin not in the list, its preflight, and a server with no allowed
        origins (the default) answer without any CORS header."""
        cfg = _with(mock_cfg, allowed_origins=[PAGE], auth_tokens={"tok": "alpha"})
        other = {**PREFLIGHT, "Origin": "http://evil.example"}
        answers = []
        for config in (cfg, _with(mock_cfg, auth_tokens={"tok": "alpha"})):
            with app_client(config) as c:
                pre = c.options("/v1/runs/r-1/steps",
                                headers=other if config is cfg else PREFLIGHT)
                get = c.get("/v1/pools", headers={"Origin": other["Origin"] if config is cfg
                                                  else PAGE, "Authorization": "Bearer tok"})
                answers.append((_cors(pre.headers), get.status_code, _cors(get.headers)))
        assert answers == [({}, 200, {}), ({}, 200, {})]

    def test_an_allowed_origin_passes_the_no_auth_origin_guard(
            self, mock_cfg: ServerConfig) -> None:
        """On a server without tokens an allowed origin's POST is stored and readable
        by the page; another origin's POST is still 403 ``ORIGIN_NOT_ALLOWED`` with no
        CORS header [NERVE-4052]."""
        with app_client(_with(mock_cfg, allowed_origins=[PAGE])) as c:
            ok = c.post("/v1/flows", json={"ast_ir": {"cors": 1}}, headers={"Origin": PAGE})
            refused = c.post("/v1/flows", json={"ast_ir": {"cors": 2}},
                             headers={"Origin": "http://evil.example"})
        assert (ok.status_code, ok.headers["access-control-allow-origin"]) == (201, PAGE)
        assert (refused.status_code, refused.json()["code"], _cors(refused.headers)) == (
            403, "ORIGIN_NOT_ALLOWED", {})
