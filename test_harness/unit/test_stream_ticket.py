"""Stream tickets: a browser opens one Step's stream without the bearer token
(NERVE-4054)."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from litestar.testing import TestClient

from orchestrator_core.clock import FakeClock
from orchestrator_core.config import ServerConfig
from orchestratord.tickets import StreamTickets
from test_harness.support import app_client, llm_step, parse_sse

A = {"Authorization": "Bearer tok-a"}
B = {"Authorization": "Bearer tok-b"}


@pytest.fixture
def clock() -> FakeClock:
    """The server's time, moved only by the test."""
    return FakeClock()


@pytest.fixture
def two_tenants(mock_cfg: ServerConfig, tmp_path: pathlib.Path,
                clock: FakeClock) -> Iterator[TestClient[Any]]:
    """A server with tenants alpha (``tok-a``) and beta (``tok-b``) on a fake clock."""
    cfg = msgspec.structs.replace(mock_cfg, data_dir=str(tmp_path / "t"),
                                  auth_tokens={"tok-a": "alpha", "tok-b": "beta"})
    with app_client(cfg, clock=clock) as c:
        yield c


def _finished_step(c: TestClient[Any], headers: dict[str, str], token: str) -> str:
    """A finished 3-token Step of the tenant of ``headers``; its id."""
    flow = c.post("/v1/flows", json={"ast_ir": {"t": token}}, headers=headers).json()
    run = c.post(f"/v1/flows/{flow['flow_id']}/runs", json={"mode": "record", "seed": 1},
                 headers=headers).json()
    step = c.post(f"/v1/runs/{run['run_id']}/steps", json=llm_step(token, max_tokens=3),
                  headers=headers).json()
    c.get(f"/v1/steps/{step['step_id']}/stream", headers=headers)
    return str(step["step_id"])


def _ticket(c: TestClient[Any], step_id: str, headers: dict[str, str]) -> str:
    resp = c.post(f"/v1/steps/{step_id}/stream-ticket", headers=headers)
    body = resp.json()
    assert (resp.status_code, body["step_id"], body["expires_in_ms"]) == (200, step_id, 60_000)
    return str(body["ticket"])


def _code(resp: Any) -> tuple[int, str]:
    return resp.status_code, resp.json()["code"]


class TestStreamTickets:
    """A ticket opens its one Step's stream for 60 s, and nothing else [NERVE-4054]."""

    def test_a_ticket_opens_its_steps_stream_without_a_token(
            self, two_tenants: TestClient[Any]) -> None:
        """The stream read with ``?ticket=`` and no Authorization is the whole stream."""
        c = two_tenants
        step_id = _finished_step(c, A, "ok")
        whole = c.get(f"/v1/steps/{step_id}/stream", headers=A).content
        resp = c.get(f"/v1/steps/{step_id}/stream", params={"ticket": _ticket(c, step_id, A)})
        assert (resp.status_code, resp.content) == (200, whole)
        assert [f["event"] for f in parse_sse(resp.content)][-1] == "end"

    def test_an_expired_ticket_is_401(self, two_tenants: TestClient[Any],
                                      clock: FakeClock) -> None:
        """At 59.999 s the ticket still opens the stream; at 60 s it answers 401 like a
        missing token."""
        c = two_tenants
        step_id = _finished_step(c, A, "exp")
        ticket = _ticket(c, step_id, A)
        c.blocking_portal.call(clock.advance, 59.999)
        before = c.get(f"/v1/steps/{step_id}/stream", params={"ticket": ticket}).status_code
        c.blocking_portal.call(clock.advance, 0.001)
        after = c.get(f"/v1/steps/{step_id}/stream", params={"ticket": ticket})
        assert (before, *_code(after)) == (200, 401, "UNAUTHORIZED")

    def test_a_ticket_opens_no_other_step_and_no_other_route(
            self, two_tenants: TestClient[Any]) -> None:
        """Alpha's ticket for one Step is 401 on its other Step's stream and on the Step
        resource itself."""
        c = two_tenants
        first, second = _finished_step(c, A, "one"), _finished_step(c, A, "two")
        ticket = _ticket(c, first, A)
        other = c.get(f"/v1/steps/{second}/stream", params={"ticket": ticket})
        resource = c.get(f"/v1/steps/{first}", params={"ticket": ticket})
        assert [_code(other), _code(resource)] == 2 * [(401, "UNAUTHORIZED")]

    def test_another_tenants_step_gets_no_ticket_and_forged_tickets_are_401(
            self, two_tenants: TestClient[Any]) -> None:
        """Beta asking a ticket for alpha's Step gets 404 like an unknown Step; a ticket
        with a changed expiry or MAC, or no ticket at all, is 401 [NERVE-4051]."""
        c = two_tenants
        step_id = _finished_step(c, A, "tenant")
        beta = c.post(f"/v1/steps/{step_id}/stream-ticket", headers=B)
        expiry, mac = _ticket(c, step_id, A).split(".")
        other_mac = ("B" if mac[0] == "A" else "A") + mac[1:]  # the first character is
        # six bits of the MAC; the last one of a 32-byte MAC carries only four
        forged = [f"{int(expiry) + 3_600_000}.{mac}", f"{expiry}.{other_mac}", "", "x" * 500]
        answers = [_code(c.get(f"/v1/steps/{step_id}/stream", params={"ticket": t}))
                   for t in forged]
        missing = c.get(f"/v1/steps/{step_id}/stream")
        assert _code(beta) == (404, "NOT_FOUND")
        assert [*answers, _code(missing)] == 5 * [(401, "UNAUTHORIZED")]


class TestTicketKey:
    """Tickets are an HMAC under a key of the server's own start [NERVE-4054]."""

    def test_a_ticket_from_another_key_or_tenant_list_is_refused(self) -> None:
        """Another server's key, or a tenant no longer configured, finds no tenant."""
        mine, other = StreamTickets(b"k" * 32), StreamTickets(b"j" * 32)
        ticket = mine.issue("s-1", "alpha", 10.0)
        assert [mine.tenant_of(ticket, "s-1", ["alpha", "beta"], 10.0),
                other.tenant_of(ticket, "s-1", ["alpha", "beta"], 10.0),
                mine.tenant_of(ticket, "s-1", ["beta"], 10.0)] == ["alpha", None, None]


class TestRunStreamTickets:
    """A run ticket opens its one Run's stream, and a Step's ticket does not [NERVE-4054]."""

    def _closed_run(self, c: TestClient[Any]) -> tuple[str, str]:
        """A closed Run of alpha with one finished Step: ``(run_id, step_id)``."""
        step_id = _finished_step(c, A, "run")
        run_id = str(c.get(f"/v1/steps/{step_id}", headers=A).json()["run_id"])
        assert c.post(f"/v1/runs/{run_id}/close", json={"status": "completed"},
                      headers=A).status_code == 200
        return run_id, step_id

    def test_a_run_ticket_opens_the_run_stream_and_nothing_else(
            self, two_tenants: TestClient[Any]) -> None:
        """With ``?ticket=`` the run stream is the same bytes as with the token, ending in
        ``run_end``; the run ticket opens none of the Run's Steps, and a Step's ticket
        does not open the Run."""
        c = two_tenants
        run_id, step_id = self._closed_run(c)
        resp = c.post(f"/v1/runs/{run_id}/stream-ticket", headers=A)
        body = resp.json()
        assert (resp.status_code, body["run_id"], body["expires_in_ms"]) == (200, run_id, 60_000)
        whole = c.get(f"/v1/runs/{run_id}/stream", headers=A).content
        by_ticket = c.get(f"/v1/runs/{run_id}/stream", params={"ticket": body["ticket"]})
        assert (by_ticket.status_code, by_ticket.content) == (200, whole)
        assert [f["event"] for f in parse_sse(whole)][-1] == "run_end"
        step_ticket = _ticket(c, step_id, A)
        assert [_code(c.get(f"/v1/steps/{step_id}/stream", params={"ticket": body["ticket"]})),
                _code(c.get(f"/v1/runs/{run_id}/stream", params={"ticket": step_ticket}))] == [
            (401, "UNAUTHORIZED")] * 2

    def test_another_tenants_run_gets_no_ticket(self, two_tenants: TestClient[Any]) -> None:
        """beta asking a ticket for alpha's Run is 404 like an unknown Run."""
        c = two_tenants
        run_id, _step = self._closed_run(c)
        other = c.post(f"/v1/runs/{run_id}/stream-ticket", headers=B)
        unknown = c.post("/v1/runs/run_nope/stream-ticket", headers=B)
        assert [_code(other), _code(unknown)] == [(404, "NOT_FOUND")] * 2
        assert (other.json()["message"].replace(run_id, "X"),) == (
            unknown.json()["message"].replace("run_nope", "X"),)
