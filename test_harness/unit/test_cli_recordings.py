"""``orchestratord runs export|import|diff|verify`` against a real server process on the
mock engine, over HTTP only (REC-7020, REC-7030, REC-7031)."""

from __future__ import annotations

import base64
import pathlib
import time
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest

from orchestrator_core.config import mock_config
from orchestrator_core.recording_diff import first_divergence
from orchestrator_core.recordings import encode_recording, read_recording
from orchestrator_core.replay import frames_hash
from orchestratord.cli import main
from test_harness.conftest import with_options
from test_harness.support import llm_step, server_process


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A mock-engine server (3400 tokens when max_tokens allows) with a record Run of 2
    Steps, a replay Run of it, and a record Run of 3 Steps of 3400 tokens."""
    data_dir = tmp_path_factory.mktemp("cli") / "server"
    cfg = with_options(mock_config(data_dir=str(data_dir)), length=3400)
    with server_process(cfg, data_dir) as (_proc, url):
        http = httpx.Client(base_url=url, timeout=30)
        flow = http.post("/v1/flows", json={"ast_ir": {"cli": True}}).json()
        run = http.post(f"/v1/flows/{flow['flow_id']}/runs", json={"seed": 5}).json()
        replay = http.post(f"/v1/flows/{flow['flow_id']}/runs",
                           json={"mode": "replay", "replay_of": run["run_id"]}).json()
        for target in (run, replay):
            for i in range(2):
                step = http.post(f"/v1/runs/{target['run_id']}/steps",
                                 json=llm_step(f"c-{i}", f"tell me {i}", max_tokens=12)).json()
                with http.stream("GET", f"/v1/steps/{step['step_id']}/stream") as s:
                    s.read()
        big = http.post(f"/v1/flows/{flow['flow_id']}/runs", json={"seed": 6}).json()
        for i in range(3):
            step = http.post(f"/v1/runs/{big['run_id']}/steps",
                             json=llm_step(f"b-{i}", f"go {i}", max_tokens=3400)).json()
            with http.stream("GET", f"/v1/steps/{step['step_id']}/stream") as s:
                s.read()
        http.close()
        yield {"url": url, "run_id": run["run_id"], "replay_id": replay["run_id"],
               "big_id": big["run_id"]}


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    status = main(list(argv))
    return status, capsys.readouterr().out


def _exported(server: dict[str, Any], capsys: pytest.CaptureFixture[str],
              path: pathlib.Path) -> bytes:
    status, _out = _cli(capsys, "runs", "export", server["run_id"], "-o", str(path),
                        "--url", server["url"], "--json")
    assert status == 0
    return path.read_bytes()


def _diverged(data: bytes, step: int, index: int) -> bytes:
    """The recording with token ``index`` of Step ``step`` replaced by another token,
    every hash made valid again."""
    rec = read_recording(data)
    line = rec.steps[step]
    frames = []
    for seq, ftype, raw in line.frames:
        if ftype == "token" and msgspec.json.decode(raw)["i"] == index:
            raw = msgspec.json.encode({"i": index, "t": "XYZ", "id": 4242,
                                       "b": base64.b64encode(b"XYZ").decode()}).decode()
        frames.append((seq, ftype, raw))
    rec.steps[step] = msgspec.structs.replace(line, frames=frames, frames_hash=frames_hash(
        (s, t, d.encode()) for s, t, d in frames))
    return encode_recording(rec)


class TestExportImport:
    """export writes the server's bytes; import makes a new run of them."""

    def test_export_writes_the_recording_and_reports_it(
            self, server: dict[str, Any], capsys: pytest.CaptureFixture[str],
            tmp_path: pathlib.Path) -> None:
        """[REC-7030] ``runs export RUN -o FILE --json`` writes exactly the route's bytes and
        reports the file, its size, lines and root hash."""
        path = tmp_path / "run.jsonl"
        status, out = _cli(capsys, "runs", "export", server["run_id"], "-o", str(path),
                           "--url", server["url"], "--json")
        served = httpx.get(f"{server['url']}/v1/runs/{server['run_id']}/recording").content
        report = msgspec.json.decode(out)
        assert (status, path.read_bytes()) == (0, served)
        assert report == {"run_id": server["run_id"], "file": str(path), "bytes": len(served),
                          "lines": 5, "root_hash": read_recording(served).trailer.root_hash}

    def test_a_10000_frame_export_shows_progress_and_takes_under_2_s(
            self, server: dict[str, Any], capsys: pytest.CaptureFixture[str],
            tmp_path: pathlib.Path) -> None:
        """[REC-7030] Exporting a Run of 10,206 frames to a file draws a progress bar (on
        stderr) and takes under 2 s, the command's whole run included."""
        started = time.monotonic()
        status = main(["runs", "export", server["big_id"], "-o", str(tmp_path / "big.jsonl"),
                       "--url", server["url"]])
        elapsed = time.monotonic() - started
        captured = capsys.readouterr()
        rec = read_recording((tmp_path / "big.jsonl").read_bytes())
        assert (status, rec.trailer.frames) == (0, 10_206)
        assert f"export {server['big_id']}" in captured.err
        assert "━" in captured.err  # the bar
        assert elapsed < 2.0

    def test_export_to_stdout_prints_the_lines(
            self, server: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
        """[REC-7030] With no ``-o``, export prints the recording itself."""
        status, out = _cli(capsys, "runs", "export", server["run_id"], "--url", server["url"])
        assert (status, out.count("\n"), out.splitlines()[0][:12]) == (0, 5, '{"engine_bui')

    def test_import_answers_the_new_run(
            self, server: dict[str, Any], capsys: pytest.CaptureFixture[str],
            tmp_path: pathlib.Path) -> None:
        """[REC-7030] ``runs import FILE --json`` prints the import's answer."""
        data = _exported(server, capsys, tmp_path / "run.jsonl")
        status, out = _cli(capsys, "runs", "import", str(tmp_path / "run.jsonl"),
                           "--url", server["url"], "--json")
        answer = msgspec.json.decode(out)
        assert (status, answer["steps"], answer["recorded_run_id"], answer["root_hash"]) == (
            0, 2, server["run_id"], read_recording(data).trailer.root_hash)
        assert answer["run_id"] != server["run_id"]

    def test_an_unknown_run_is_a_server_error_exit(
            self, server: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
        """[REC-7030] A refusal exits 2 and, with --json, prints its envelope."""
        status, out = _cli(capsys, "runs", "export", "run_nope", "--url", server["url"],
                           "--json")
        assert (status, msgspec.json.decode(out)["error"]["code"]) == (2, "NOT_FOUND")


class TestDiff:
    """diff names the first divergent step, field and token index."""

    def test_a_run_and_its_replay_agree(
            self, server: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
        """[REC-7030] Two run ids, a recording and its replay: equal, exit 0."""
        status, out = _cli(capsys, "runs", "diff", server["run_id"], server["replay_id"],
                           "--url", server["url"], "--json")
        assert (status, msgspec.json.decode(out)) == (0, {"equal": True, "divergence": None})

    def test_a_forced_divergence_prints_the_index_and_both_tokens(
            self, server: dict[str, Any], capsys: pytest.CaptureFixture[str],
            tmp_path: pathlib.Path) -> None:
        """[REC-7020] [REC-7030] Two files whose second step differs at token 3: the table
        names step 1, field token, index 3, and the expected and actual tokens."""
        data = _exported(server, capsys, tmp_path / "a.jsonl")
        (tmp_path / "b.jsonl").write_bytes(_diverged(data, 1, 3))
        status, out = _cli(capsys, "runs", "diff", str(tmp_path / "a.jsonl"),
                           str(tmp_path / "b.jsonl"), "--url", server["url"])
        expected = first_divergence(read_recording(data),
                                    read_recording(_diverged(data, 1, 3)))
        assert expected is not None
        assert (status, expected.step, expected.field, expected.index) == (1, 1, "token", 3)
        assert expected.actual == {"t": "XYZ", "id": 4242, "b": "WFla"}
        for text in ("first divergence", "c-1", "token", " 3 ", "XYZ", "4242",
                     f'"id":{expected.expected["id"]}'):
            assert text in out
        status, out = _cli(capsys, "runs", "diff", str(tmp_path / "a.jsonl"),
                           str(tmp_path / "b.jsonl"), "--url", server["url"], "--json")
        assert (status, msgspec.json.decode(out)["divergence"]) == (
            1, msgspec.to_builtins(expected))

    def test_the_diff_of_a_changed_input_names_its_path(
            self, server: dict[str, Any], capsys: pytest.CaptureFixture[str],
            tmp_path: pathlib.Path) -> None:
        """[REC-7020] A Step recorded with another prompt differs at ``input.prompt``."""
        rec = read_recording(_exported(server, capsys, tmp_path / "a.jsonl"))
        other = read_recording(_exported(server, capsys, tmp_path / "b.jsonl"))
        step = other.steps[0].step
        other.steps[0] = msgspec.structs.replace(other.steps[0], step=msgspec.structs.replace(
            step, input={**step.input, "prompt": "changed"}, input_hash="b3:changed"))
        found = first_divergence(rec, other)
        assert found is not None
        assert (found.step, found.field, found.expected, found.actual) == (
            0, "input.prompt", rec.steps[0].step.input, other.steps[0].step.input)


class TestVerify:
    """verify checks the hashes, and --strict audits the recording on a live pool."""

    def test_verify_reports_a_sound_file(
            self, server: dict[str, Any], capsys: pytest.CaptureFixture[str],
            tmp_path: pathlib.Path) -> None:
        """[REC-7030] ``runs verify FILE --json`` checks every hash and prints the counts."""
        data = _exported(server, capsys, tmp_path / "a.jsonl")
        status, out = _cli(capsys, "runs", "verify", str(tmp_path / "a.jsonl"), "--json")
        rec = read_recording(data)
        assert (status, msgspec.json.decode(out)) == (0, {
            "ok": True, "format": "orchestratord.recording/1.1", "run_id": server["run_id"],
            "steps": 2, "frames": rec.trailer.frames, "facts": 0, "checkpoints": 0,
            "root_hash": rec.trailer.root_hash})

    def test_verify_refuses_a_flipped_byte_naming_the_line(
            self, server: dict[str, Any], capsys: pytest.CaptureFixture[str],
            tmp_path: pathlib.Path) -> None:
        """[REC-7030] A flipped byte in line 4 exits 1 naming line 4."""
        data = bytearray(_exported(server, capsys, tmp_path / "a.jsonl"))
        at = data.index(b"\n", data.index(b"\n", data.index(b"\n") + 1) + 1) + 40
        data[at] ^= 1
        (tmp_path / "bad.jsonl").write_bytes(bytes(data))
        status, out = _cli(capsys, "runs", "verify", str(tmp_path / "bad.jsonl"), "--json")
        report = msgspec.json.decode(out)
        assert (status, report["ok"], report["error"]["data"]["line"]) == (1, False, 4)

    def test_strict_verify_reproduces_on_the_same_engine(
            self, server: dict[str, Any], capsys: pytest.CaptureFixture[str],
            tmp_path: pathlib.Path) -> None:
        """[REC-7031] ``verify --strict`` imports the file and strict-replays both Steps on
        the live mock pool: each is reproduced, exit 0."""
        _exported(server, capsys, tmp_path / "a.jsonl")
        status, out = _cli(capsys, "runs", "verify", "--strict", str(tmp_path / "a.jsonl"),
                           "--url", server["url"], "--json")
        audit = msgspec.json.decode(out)["strict"]
        assert (status, audit["reproduced"]) == (0, True), out
        assert [(s["step"], s["client_token"], s["reproduced"]) for s in audit["steps"]] == [
            (0, "c-0", True), (1, "c-1", True)]

    def test_strict_verify_reports_a_divergent_token(
            self, server: dict[str, Any], capsys: pytest.CaptureFixture[str],
            tmp_path: pathlib.Path) -> None:
        """[REC-7031] A recording whose second Step's token 3 the engine does not produce:
        that Step is not reproduced, with REPLAY_DIVERGED at index 3; exit 1."""
        data = _exported(server, capsys, tmp_path / "a.jsonl")
        (tmp_path / "b.jsonl").write_bytes(_diverged(data, 1, 3))
        status, out = _cli(capsys, "runs", "verify", "--strict", str(tmp_path / "b.jsonl"),
                           "--url", server["url"], "--json")
        steps = msgspec.json.decode(out)["strict"]["steps"]
        assert status == 1
        assert [(s["client_token"], s["reproduced"]) for s in steps] == [("c-0", True),
                                                                         ("c-1", False)]
        assert (steps[1]["error"]["code"], steps[1]["error"]["data"]["index"]) == (
            "REPLAY_DIVERGED", 3)
