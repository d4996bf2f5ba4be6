"""The browsing commands of the CLI against a real server, over HTTP (REC-7070..7077).

One bearer-token server (Granian, the mock engine at 200 tokens a second) serves the
module: a Flow with a recorded Run of two Steps, and a second Flow with one Run. Each
command runs in-process through :func:`orchestratord.cli.main`; its ``--json`` output
must equal what the API answers, and its table must show the cells named.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest

from orchestrator_core.config import mock_config
from orchestratord.cli import COMMAND_MODULES, main
from test_harness.support import llm_step, server_process

TOKEN = "tok-cli"


class Server:
    """The module's server, its data and an authenticated HTTP client."""

    def __init__(self, url: str, http: httpx.Client) -> None:
        self.url = url
        self.http = http
        self.flows: list[str] = []
        self.runs: list[str] = []
        self.steps: list[str] = []

    def get(self, path: str) -> Any:
        """The API's JSON answer to ``GET path``."""
        resp = self.http.get(path)
        assert resp.status_code == 200, resp.text
        return resp.json()

    def step_to_end(self, run_id: str, body: dict[str, Any]) -> str:
        """Submit a Step, read its stream to the end; its step_id."""
        with self.http.stream("POST", f"/v1/runs/{run_id}/steps", json=body,
                              headers={"accept": "text/event-stream"}) as resp:
            resp.read()
            return resp.headers["x-step-id"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Flow 0 with Run 0 (Steps 0 and 1, recorded) and flow 1 with Run 1 (no Step)."""
    data = tmp_path_factory.mktemp("cli")
    cfg = msgspec.structs.replace(mock_config(data_dir=str(data),
                                              mock_options={"tokens_per_s": 200}),
                                  auth_tokens={TOKEN: "alpha", "tok-other": "beta"})
    with server_process(cfg, data) as (_proc, url), \
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"},
                         timeout=30) as http:
        s = Server(url, http)
        for i in range(2):
            s.flows.append(http.post("/v1/flows", json={
                "ast_ir": {"cli": i}, "labels": {"team": "cli"}}).json()["flow_id"])
            s.runs.append(http.post(f"/v1/flows/{s.flows[i]}/runs", json={
                "seed": 11 + i}).json()["run_id"])
        s.steps = [s.step_to_end(s.runs[0], llm_step(f"t{i}", prompt=f"cli prompt {i}"))
                   for i in range(2)]
        yield s


def cli(server: Server, capsys: pytest.CaptureFixture[str], *argv: str,
        token: str | None = TOKEN) -> tuple[int, str, str]:
    """Run ``orchestratord *argv --url <server>`` (and ``--token``): exit code, stdout,
    stderr."""
    capsys.readouterr()
    code = main([*argv, "--url", server.url, *(["--token", token] if token else [])])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def _wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables as wide as they need (rich reads ``COLUMNS``), no environment defaults."""
    monkeypatch.setenv("COLUMNS", "300")
    monkeypatch.delenv("ORCHESTRATORD_URL", raising=False)
    monkeypatch.delenv("ORCHESTRATORD_TOKEN", raising=False)


def _rows(table: str) -> list[list[str]]:
    """The body cells of a rich table, row by row."""
    return [[c.strip() for c in line.strip("│ ").split("│")]
            for line in table.splitlines() if line.startswith("│")]


class TestRunsCommands:
    """``runs list``, ``runs show`` and ``runs tail``."""

    def test_runs_list_json_is_the_apis_answer(self, server: Server,
                                               capsys: pytest.CaptureFixture[str]) -> None:
        """[REC-7071] ``runs list --json`` prints ``GET /v1/runs``: both Flows' Runs."""
        code, out, _ = cli(server, capsys, "runs", "list", "--json")
        assert code == 0
        assert json.loads(out) == server.get("/v1/runs?limit=100")
        assert [r["run_id"] for r in json.loads(out)] == server.runs

    def test_runs_list_table_filters_by_flow_mode_and_status(
            self, server: Server, capsys: pytest.CaptureFixture[str]) -> None:
        """[REC-7071] The table lists id, Flow, mode, status and Step count; ``--flow``
        keeps one Flow's Runs and ``--mode replay`` none."""
        _, table, _ = cli(server, capsys, "runs", "list")
        _, one_flow, _ = cli(server, capsys, "runs", "list", "--flow", server.flows[1])
        _, replays, _ = cli(server, capsys, "runs", "list", "--mode", "replay", "--json")
        _, cancelled, _ = cli(server, capsys, "runs", "list", "--status", "cancelled",
                              "--json")
        assert [r[:5] for r in _rows(table)] == [
            [server.runs[0], server.flows[0], "record", "active", "2"],
            [server.runs[1], server.flows[1], "record", "active", "0"]]
        assert [r[0] for r in _rows(one_flow)] == [server.runs[1]]
        assert (json.loads(replays), json.loads(cancelled)) == ([], [])

    def test_runs_list_pages_with_after(self, server: Server,
                                        capsys: pytest.CaptureFixture[str]) -> None:
        """[REC-7071] ``--limit 1`` prints one Run and the cursor of the next page;
        ``--after`` it prints the other."""
        _, first, _ = cli(server, capsys, "runs", "list", "--limit", "1")
        _, second, _ = cli(server, capsys, "runs", "list", "--limit", "1", "--after",
                           server.runs[0])
        assert [r[0] for r in _rows(first)] == [server.runs[0]]
        assert first.endswith(f"more: --after {server.runs[0]}\n")
        assert [r[0] for r in _rows(second)] == [server.runs[1]]
        assert "more:" not in second

    def test_runs_show_json_is_the_run_and_its_steps(
            self, server: Server, capsys: pytest.CaptureFixture[str]) -> None:
        """[REC-7072] ``runs show --json`` prints ``{run, steps}`` as the API answers
        them."""
        code, out, _ = cli(server, capsys, "runs", "show", server.runs[0], "--json")
        assert code == 0
        assert json.loads(out) == {
            "run": server.get(f"/v1/runs/{server.runs[0]}"),
            "steps": server.get(f"/v1/runs/{server.runs[0]}/steps")}

    def test_runs_show_table_has_a_row_per_step(self, server: Server,
                                                capsys: pytest.CaptureFixture[str]) -> None:
        """[REC-7072] Each Step's type, status, duration, tokens, cost, placement and
        provenance (engine, seed, finish reason)."""
        _, out, _ = cli(server, capsys, "runs", "show", server.runs[0])
        steps = [server.get(f"/v1/steps/{s}") for s in server.steps]
        expected = [[s["step_id"], "llm_call", "succeeded", str(s["usage"]["wall_ms"]),
                     f"{s['usage']['tokens_in']}/{s['usage']['tokens_out']}", "0.000000",
                     s["provenance"]["replica_id"],
                     f"mock seed={s['provenance']['seed']} stop"] for s in steps]
        assert _rows(out) == expected
        assert out.startswith(f"run {server.runs[0]}  flow {server.flows[0]}  mode record  "
                              "seed 11  status active  created ")

    def test_runs_tail_prints_a_steps_text(self, server: Server,
                                           capsys: pytest.CaptureFixture[str]) -> None:
        """[REC-7073] ``runs tail STEP_ID`` prints the Step's text and a newline, and
        names its terminal frame on stderr; ``runs tail RUN_ID`` follows the newest
        Step."""
        text = server.get(f"/v1/steps/{server.steps[0]}")
        frames = self_frames(server, server.steps[0])
        expected = "".join(f["data"]["t"] for f in frames if f["event"] == "token")
        code, out, err = cli(server, capsys, "runs", "tail", server.steps[0])
        _, by_run, by_run_err = cli(server, capsys, "runs", "tail", server.runs[0])
        assert text["status"] == "succeeded"
        assert (code, out, err) == (0, expected + "\n", f"{server.steps[0]}: end\n")
        assert by_run_err == f"{server.steps[1]}: end\n"
        assert by_run.endswith("\n")

    def test_runs_tail_json_prints_every_frame(self, server: Server,
                                               capsys: pytest.CaptureFixture[str]) -> None:
        """[REC-7073] ``runs tail --json`` prints one ``{id, event, data}`` line per
        frame, equal to the Step's SSE log."""
        _, out, _ = cli(server, capsys, "runs", "tail", server.steps[1], "--json")
        assert [json.loads(line) for line in out.splitlines()] == self_frames(
            server, server.steps[1])

    def test_runs_tail_follows_a_live_step(self, server: Server,
                                           capsys: pytest.CaptureFixture[str]) -> None:
        """[REC-7073] A Step submitted just before (at 200 tokens a second) is followed
        while it runs: the output is its whole text."""
        step = server.http.post(f"/v1/runs/{server.runs[1]}/steps", json=llm_step(
            "live", prompt="a live prompt to follow", max_tokens=60)).json()["step_id"]
        code, out, err = cli(server, capsys, "runs", "tail", step)
        frames = self_frames(server, step)
        assert (code, err) == (0, f"{step}: end\n")
        assert out == "".join(f["data"]["t"] for f in frames if f["event"] == "token") + "\n"


def self_frames(server: Server, step_id: str) -> list[dict[str, Any]]:
    """The Step's durable frames as ``{id, event, data}``, read from its SSE log."""
    raw = server.http.get(f"/v1/steps/{step_id}/stream").text
    frames = []
    for block in raw.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines()
                      if ": " in line and not line.startswith(":"))
        if "event" in fields:
            frames.append({"id": int(fields["id"]) if "id" in fields else None,
                           "event": fields["event"], "data": json.loads(fields["data"])})
    return frames


class TestFlowsAndPools:
    """``flows list``, ``flows show`` and ``pools``."""

    def test_flows_list_and_show_json_are_the_apis_answers(
            self, server: Server, capsys: pytest.CaptureFixture[str]) -> None:
        """[REC-7074] ``flows list --json`` is ``GET /v1/flows`` and ``flows show --json``
        is ``GET /v1/flows/{id}``."""
        _, listed, _ = cli(server, capsys, "flows", "list", "--json")
        _, shown, _ = cli(server, capsys, "flows", "show", server.flows[1], "--json")
        assert json.loads(listed) == server.get("/v1/flows")
        assert [f["flow_id"] for f in json.loads(listed)] == server.flows
        assert json.loads(shown) == server.get(f"/v1/flows/{server.flows[1]}")

    def test_flows_tables(self, server: Server, capsys: pytest.CaptureFixture[str]) -> None:
        """[REC-7074] The list shows id, hash, labels and tool count; ``show`` the
        header lines and the Flow's program."""
        _, listed, _ = cli(server, capsys, "flows", "list")
        _, shown, _ = cli(server, capsys, "flows", "show", server.flows[0])
        flows = server.get("/v1/flows")
        assert [r[:4] for r in _rows(listed)] == [
            [f["flow_id"], f["hash"], '{"team":"cli"}', "0"] for f in flows]
        assert shown == (f"flow {flows[0]['flow_id']}  hash {flows[0]['hash']}  created "
                         f"{flows[0]['created_at']}\nlabels {{\"team\":\"cli\"}}\ntools -\n"
                         '{\n  "cli": 0\n}\n')

    def test_pools_json_and_table(self, server: Server,
                                  capsys: pytest.CaptureFixture[str]) -> None:
        """[REC-7075] ``pools --json`` is ``GET /v1/pools``; the table has a row per
        replica with its health and slots."""
        _, out, _ = cli(server, capsys, "pools", "--json")
        _, table, _ = cli(server, capsys, "pools")
        assert json.loads(out) == server.get("/v1/pools")
        assert [p["pool_id"] for p in json.loads(out)] == ["mock-0"]
        assert [r[:6] for r in _rows(table)] == [
            ["mock-0", "mock 1", "mock:echo-1", "mock-0/r0", "ready", "0/4"],
            ["mock-0", "mock 1", "mock:echo-1", "mock-0/r1", "ready", "0/4"]]


class TestConnection:
    """``--url``, ``--token``, their environment defaults, and refusals."""

    def test_environment_supplies_url_and_token(
            self, server: Server, capsys: pytest.CaptureFixture[str],
            monkeypatch: pytest.MonkeyPatch) -> None:
        """[REC-7076] With ``$ORCHESTRATORD_URL`` and ``$ORCHESTRATORD_TOKEN`` set, no
        option is needed."""
        monkeypatch.setenv("ORCHESTRATORD_URL", server.url)
        monkeypatch.setenv("ORCHESTRATORD_TOKEN", TOKEN)
        capsys.readouterr()
        assert main(["flows", "list", "--json"]) == 0
        assert [f["flow_id"] for f in json.loads(capsys.readouterr().out)] == server.flows

    def test_refusals_print_code_and_message_and_exit_1(
            self, server: Server, capsys: pytest.CaptureFixture[str]) -> None:
        """[REC-7076] [REC-7077] No token, another tenant's Run, an unknown Flow: exit 1
        with ``CODE: message`` on stderr and nothing on stdout; another tenant's Run
        reads exactly like an unknown one."""
        answers = [cli(server, capsys, "runs", "list", token=None),
                   cli(server, capsys, "runs", "show", server.runs[0], token="tok-other"),
                   cli(server, capsys, "runs", "show", "run_000000000000000000000000"),
                   cli(server, capsys, "flows", "show", "flw_unknown")]
        assert answers == [
            (1, "", "UNAUTHORIZED: a valid bearer token is required\n"),
            (1, "", f"NOT_FOUND: no run {server.runs[0]}\n"),
            (1, "", "NOT_FOUND: no run run_000000000000000000000000\n"),
            (1, "", "NOT_FOUND: no flow flw_unknown\n")]

    def test_the_runs_group_is_shared_by_command_modules(self) -> None:
        """[REC-7070] ``orchestratord runs`` is one group that command modules add to;
        this module adds ``list``, ``show`` and ``tail``."""
        assert "orchestratord.cli_browse" in COMMAND_MODULES
        with pytest.raises(SystemExit) as shown:
            main(["runs", "--help"])
        assert shown.value.code == 0



class TestProgressBar:
    """The bar of ``runs tail`` on a terminal."""

    def test_tail_on_a_terminal_counts_tokens_in_a_bar(
            self, server: Server, capsys: pytest.CaptureFixture[str],
            monkeypatch: pytest.MonkeyPatch) -> None:
        """[REC-7073] With stderr a terminal (rich's ``TTY_COMPATIBLE=1``), stderr shows
        the bar counting every token of the Step; on a pipe there is none (above)."""
        monkeypatch.setenv("TTY_COMPATIBLE", "1")
        tokens = sum(f["event"] == "token" for f in self_frames(server, server.steps[0]))
        code, _, err = cli(server, capsys, "runs", "tail", server.steps[0])
        assert code == 0
        assert f"{tokens} tokens" in err
        assert err.rstrip().endswith(f"{server.steps[0]}: end")
