"""The recording format's checks, the store's import path and hostile imports
(REC-7001..REC-7011)."""

from __future__ import annotations

import asyncio
import pathlib
import sqlite3
from typing import Any

import msgspec
import pytest

from contracts.errors import Conflict, InvalidParams
from orchestrator_core.clock import SystemClock
from orchestrator_core.config import mock_config
from orchestrator_core.recording_diff import first_divergence
from orchestrator_core.recording_io import export_run, import_recording
from orchestrator_core.recordings import (
    FORMAT,
    MAX_LINE_BYTES,
    FactLine,
    FlowLine,
    HeaderLine,
    RecordingReader,
    StepLine,
    encode_line,
    encode_recording,
    read_recording,
)
from orchestrator_core.rows import FlowRow, RunRow, StepRow
from orchestrator_core.store import SqliteStore
from test_harness.recordings.weather_agent import RECORDING
from test_harness.support import app_client, llm_step


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A recording of 2 llm_call Steps, and of a replay Run of it."""
    cfg = mock_config(data_dir=str(tmp_path_factory.mktemp("rec") / "data"))
    with app_client(cfg) as c:
        flow = c.post("/v1/flows", json={"ast_ir": {"unit": True}}).json()
        run = c.post(f"/v1/flows/{flow['flow_id']}/runs", json={"seed": 3}).json()
        replay = c.post(f"/v1/flows/{flow['flow_id']}/runs",
                        json={"mode": "replay", "replay_of": run["run_id"]}).json()
        for target in (run, replay):
            for i in range(2):
                step = c.post(f"/v1/runs/{target['run_id']}/steps",
                              json=llm_step(f"u-{i}", f"prompt {i}")).json()
                with c.stream("GET", f"/v1/steps/{step['step_id']}/stream") as s:
                    b"".join(s.iter_bytes())
        return {"file": c.get(f"/v1/runs/{run['run_id']}/recording").content,
                "replay": c.get(f"/v1/runs/{replay['run_id']}/recording").content}


def _refusal(data: bytes) -> dict[str, Any]:
    with pytest.raises(InvalidParams) as err:
        read_recording(data)
    assert err.value.data is not None
    return err.value.data


def _relined(data: bytes, index: int, change: Any) -> bytes:
    """The file with line ``index`` decoded, changed and re-encoded with a valid hash."""
    lines = data.split(b"\n")[:-1]
    line = msgspec.json.decode(lines[index], type=HeaderLine | FlowLine | StepLine)
    lines[index] = encode_line(change(line))[:-1]
    return b"\n".join(lines) + b"\n"


class TestReader:
    """A recording is checked line by line, and every refusal names its line."""

    def test_a_whole_recording_reads_back(self, recorded: dict[str, Any]) -> None:
        """[REC-7005] An untouched export reads back with the counts of its trailer."""
        rec = read_recording(recorded["file"])
        assert (rec.header.format, len(rec.steps), rec.trailer.steps, rec.trailer.frames) == (
            FORMAT, 2, 2, sum(len(s.frames) for s in rec.steps))

    def test_a_flipped_byte_in_any_line_is_refused_naming_that_line(
            self, recorded: dict[str, Any]) -> None:
        """[REC-7006] Flipping the low bit of a byte at the start, a third, the middle, the
        end and the newline of every line is refused, naming that line."""
        data = recorded["file"]
        starts = [0, *[i + 1 for i, b in enumerate(data) if b == 0x0A][:-1]]
        named = []
        for n, start in enumerate(starts, 1):
            end = data.index(b"\n", start)
            for at in sorted({start, start + (end - start) // 3, (start + end) // 2,
                              end - 1, end}):
                bad = bytearray(data)
                bad[at] ^= 1
                named.append((n, _refusal(bytes(bad))["line"]))
        assert named == [(n, n) for n, _ in named]
        assert len({n for n, _ in named}) == 5

    def test_every_flipped_bit_of_a_committed_recording_is_refused_at_its_line(
            self) -> None:
        """[REC-7006] Flipping the low bit of each byte of ``weather_agent.jsonl``, one at
        a time, newlines included, is refused every time, naming that byte's line."""
        data = RECORDING.read_bytes()
        starts = [0, *[i + 1 for i, b in enumerate(data) if b == 0x0A][:-1]]
        wrong = []
        for at in range(len(data)):
            bad = bytearray(data)
            bad[at] ^= 1
            line = sum(1 for start in starts if start <= at)
            if _refusal(bytes(bad))["line"] != line:
                wrong.append(at)
        assert (len(data) > 8000, wrong) == (True, [])

    def test_another_format_version_is_refused(self, recorded: dict[str, Any]) -> None:
        """[REC-7001] A header naming another format is refused at line 1."""
        bad = _relined(recorded["file"], 0, lambda h: msgspec.structs.replace(
            h, format="orchestratord.recording/2"))
        assert _refusal(bad) == {"line": 1, "field": "format", "reason": "format",
                                 "supported": FORMAT}

    def test_a_flow_that_does_not_match_its_hash_is_refused(
            self, recorded: dict[str, Any]) -> None:
        """[REC-7002] Flow content changed with the line's hash recomputed is refused at
        line 2: the content no longer matches its address."""
        bad = _relined(recorded["file"], 1, lambda f: msgspec.structs.replace(
            f, content={**f.content, "ast_ir": {"unit": False}}))
        assert _refusal(bad) == {"line": 2, "field": "flow_hash", "reason": "flow_hash"}

    def test_frames_that_do_not_match_their_hash_are_refused(
            self, recorded: dict[str, Any]) -> None:
        """[REC-7003] A frame changed with the line's hash recomputed is refused at its
        line: the frames no longer match their content hash."""
        def change(line: StepLine) -> StepLine:
            frames = list(line.frames)
            seq, ftype, data = frames[1]
            frames[1] = (seq, ftype, data.replace('"i":0', '"i":9'))
            return msgspec.structs.replace(line, frames=frames)
        data = _refusal(_relined(recorded["file"], 2, change))
        assert (data["line"], data["field"], data["reason"]) == (3, "frames_hash",
                                                                  "frames_hash")

    def test_lines_rehashed_after_a_removal_fail_the_root_hash(
            self, recorded: dict[str, Any]) -> None:
        """[REC-7005] Removing the second step and renumbering it away, each line with a
        valid hash, is refused at the trailer: its counts (and root hash) differ."""
        lines = recorded["file"].split(b"\n")[:-1]
        del lines[3]
        data = _refusal(b"\n".join(lines) + b"\n")
        assert (data["line"], data["reason"]) == (4, "counts")
        lines = recorded["file"].split(b"\n")[:-1]
        lines[2], lines[3] = lines[3], lines[2]
        assert _refusal(b"\n".join(lines) + b"\n")["reason"] == "order"

    def test_a_line_over_the_bound_is_refused_before_parsing(self) -> None:
        """[REC-7008] A line longer than MAX_LINE_BYTES is refused as too long."""
        reader = RecordingReader()
        with pytest.raises(InvalidParams) as err:
            reader.feed(b" " * (MAX_LINE_BYTES + 1))
        assert err.value.data == {"line": 1, "field": "line", "reason": "too_long",
                                  "max_line_bytes": MAX_LINE_BYTES}

    def test_a_line_after_the_trailer_is_refused(self, recorded: dict[str, Any]) -> None:
        """[REC-7006] Anything after the trailer is refused, naming its line."""
        data = _refusal(recorded["file"] + recorded["file"].split(b"\n")[0] + b"\n")
        assert (data["line"], data["reason"]) == (6, "after_trailer")

    def test_a_replay_run_exports_the_frames_it_serves_by_reference(
            self, recorded: dict[str, Any]) -> None:
        """[REC-7003] A replay Run's Steps, served by reference, export the recorded frames
        themselves, with the same content hash."""
        rec, replay = read_recording(recorded["file"]), read_recording(recorded["replay"])
        assert [(s.frames, s.frames_hash) for s in replay.steps] == [
            (s.frames, s.frames_hash) for s in rec.steps]
        assert (replay.header.run.mode, replay.header.run.replay_of) == (
            "replay", rec.header.run.run_id)


BODY = '{"budgets":{},"policy":{},"pool_policy":{},"fs_policy":{},"labels":{}}'


def _seeded(store: SqliteStore) -> None:
    store.insert_flow(FlowRow("flw_1", "b3:f", "{}", "[]", "{}", None, "t0"))
    store.insert_run(RunRow("run_1", "flw_1", "b3:f", "record", 1, None, BODY, "b3:p",
                            "active", "t0"))


class TestStoreImport:
    """The export reads finished Steps only; the import is one transaction."""

    def test_a_run_with_an_unfinished_step_is_not_exported(self, store: SqliteStore) -> None:
        """[REC-7010] Exporting a Run whose Step is still running is a CONFLICT naming the
        Step and the field ``status``."""
        _seeded(store)
        store.insert_step(StepRow("stp_1", "run_1", "llm_call", "k", "{}", "b3:i", None,
                                  "running", 1, "t0"))
        with pytest.raises(Conflict) as err:
            export_run(store, "run_1", "default", "test")
        assert err.value.data == {"step_id": "stp_1", "field": "status", "status": "running"}

    def test_a_failing_import_stores_nothing(self, tmp_path: pathlib.Path) -> None:
        """[REC-7011] An import whose second Step collides with the first rolls back the
        Flow, the Run and the first Step."""
        store = SqliteStore(tmp_path / "i.db")
        step = StepRow("stp_a", "run_1", "llm_call", "same", "{}", "b3:i", None,
                       "succeeded", 1, "t0", last_seq=0)
        try:
            with pytest.raises(sqlite3.IntegrityError):
                store.import_run(
                    flow=FlowRow("flw_1", "b3:f", "{}", "[]", "{}", None, "t0"),
                    run=RunRow("run_1", "flw_1", "b3:f", "record", 1, None, "{}", "b3:p",
                               "active", "t0"),
                    steps=[step, msgspec.structs.replace(step, step_id="stp_b")],
                    events=[("stp_a", 0, "run_1", "end", b"{}")], facts=[], checkpoints=[],
                    engine_builds=[])
            assert (store.get_flow("flw_1"), store.get_run("run_1"),
                    store.get_step("stp_a")) == (None, None, None)
        finally:
            store.close()


NDJSON = {"content-type": "application/x-ndjson"}


def _import(client: Any, data: bytes, headers: dict[str, str] | None = None) -> Any:
    return client.post("/v1/recordings", content=data, headers=headers or NDJSON)


def _rewritten(data: bytes, change: Any) -> bytes:
    """The recording with its lines changed by ``change(Recording)``, every hash valid."""
    rec = read_recording(data)
    change(rec)
    return encode_recording(rec)


class TestHostileImports:
    """An import refuses what the routes that made a Run would have refused: a typed 4xx
    naming the line, never a 500, and nothing stored."""

    def _refused(self, client: Any, data: bytes) -> dict[str, Any]:
        resp = _import(client, data)
        assert resp.status_code == 400, resp.text
        assert client.get("/v1/flows").json() == []
        return dict(resp.json()["data"])

    def test_an_unfinished_step_is_refused(self, client: Any,
                                           recorded: dict[str, Any]) -> None:
        """[REC-7009] A Step whose status is ``running`` (hashes recomputed) is refused at
        its line, naming ``step.status``."""
        def change(rec: Any) -> None:
            rec.steps[1] = msgspec.structs.replace(rec.steps[1], step=msgspec.structs.replace(
                rec.steps[1].step, status="running"))
        data = self._refused(client, _rewritten(recorded["file"], change))
        assert data == {"line": 4, "field": "step.status", "reason": "invalid"}

    def test_a_policy_outside_the_tenants_sandboxes_is_refused(
            self, client: Any, recorded: dict[str, Any]) -> None:
        """[REC-7009] A Run body whose fs_policy roots at ``/etc`` is refused at line 1."""
        def change(rec: Any) -> None:
            run = rec.header.run
            rec.header = msgspec.structs.replace(rec.header, run=msgspec.structs.replace(
                run, body={**run.body, "fs_policy": {"roots": ["/etc"]}}))
        data = self._refused(client, _rewritten(recorded["file"], change))
        assert data == {"line": 1, "field": "run.body", "reason": "invalid"}

    def test_a_step_input_no_route_accepts_is_refused(
            self, client: Any, recorded: dict[str, Any]) -> None:
        """[REC-7009] A Step whose input is not a valid submission of its type is refused
        naming ``step.input``."""
        def change(rec: Any) -> None:
            rec.steps[0] = msgspec.structs.replace(rec.steps[0], step=msgspec.structs.replace(
                rec.steps[0].step, input={"model": 7}))
        data = self._refused(client, _rewritten(recorded["file"], change))
        assert data == {"line": 3, "field": "step.input", "reason": "invalid"}

    def test_an_integer_outside_int64_is_refused_at_its_line(
            self, client: Any, recorded: dict[str, Any]) -> None:
        """[REC-7008] A seed of 2**64 is a 400 naming ``run.seed``, not a 500."""
        lines = recorded["file"].split(b"\n")
        at = lines[0].index(b'"seed":') + len(b'"seed":')
        end = lines[0].index(b",", at)
        lines[0] = lines[0][:at] + str(2**64).encode() + lines[0][end:]
        data = self._refused(client, b"\n".join(lines))
        assert (data["line"], data["field"], data["reason"]) == (1, "run.seed", "malformed")

    def test_a_line_nested_too_deep_is_refused(self, client: Any,
                                               recorded: dict[str, Any]) -> None:
        """[REC-7008] A Fact nested 100 levels deep is refused as ``too_deep``."""
        deep: Any = 1
        for _ in range(100):
            deep = [deep]

        def change(rec: Any) -> None:
            rec.facts = [FactLine(fact_id="fct_1", seq=0, type="t", schema_uri="u", data=deep,
                                  emitted_by_step=None, ts="t0")]
        data = self._refused(client, _rewritten(recorded["file"], change))
        assert data == {"line": 5, "field": "line", "reason": "too_deep", "max_depth": 80}

    def test_a_line_over_the_bound_is_refused_as_it_streams(self, client: Any) -> None:
        """[REC-7008] A body whose first line exceeds MAX_LINE_BYTES is refused at line 1
        as ``too_long``."""
        data = self._refused(client, b"x" * (MAX_LINE_BYTES + 10))
        assert data == {"line": 1, "field": "line", "reason": "too_long",
                        "max_line_bytes": MAX_LINE_BYTES}

    def test_a_body_of_another_media_type_is_415(self, client: Any,
                                                 recorded: dict[str, Any]) -> None:
        """[REC-7011] A recording sent as application/json is 415."""
        resp = _import(client, recorded["file"], {"content-type": "application/json"})
        assert (resp.status_code, resp.json()["code"]) == (415, "UNSUPPORTED_MEDIA_TYPE")


class TestRoundTrip:
    """An import is what its file says, and exports back to it."""

    def test_an_import_checks_its_lines_off_the_event_loop(
            self, client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        """[REC-7011] Every line of ``POST /v1/recordings`` is checked in a thread with
        no running event loop, and the import is stored."""
        where: list[bool] = []
        feed = RecordingReader.feed

        def watched(self: RecordingReader, raw: bytes) -> None:
            try:
                asyncio.get_running_loop()
                where.append(True)
            except RuntimeError:
                where.append(False)
            feed(self, raw)

        monkeypatch.setattr(RecordingReader, "feed", watched)
        data = RECORDING.read_bytes()
        resp = _import(client, data)
        assert (resp.status_code, len(where), set(where)) == (
            201, data.count(b"\n"), {False}), resp.text

    def test_an_import_is_sound_and_exports_back_to_its_recording(
            self, store: SqliteStore) -> None:
        """[REC-7011] [REC-7013] [REC-7111] The committed recording (format ``/1``)
        imported into a store passes its integrity check, and its export agrees with the
        file step for step, two bytes longer: the header names ``/1.1``, and only the
        Run's and the Steps' ids differ."""
        data = RECORDING.read_bytes()
        rec = read_recording(data)
        made = import_recording(store, rec, "default", "default", SystemClock(),
                                lambda fs: None)
        again = b"".join(export_run(store, made.run_id, "default", "orchestratord 0.1.0"))
        assert store.integrity() == {"seq_gaps": 0, "stale_last_seq": 0, "multi_terminal": 0,
                                     "broken_references": 0, "usage_mismatch": 0}
        assert (rec.header.format, read_recording(again).header.format) == (
            "orchestratord.recording/1", "orchestratord.recording/1.1")
        assert (first_divergence(rec, read_recording(again)), len(again)) == (
            None, len(data) + len(".1"))
        back = read_recording(again)
        assert back.header.run.run_id == made.run_id != rec.header.run.run_id
        assert {s.step.step_id for s in back.steps} & {s.step.step_id for s in rec.steps} == set()
