"""Format ``/1.1``: the rendered prompt texts a recording carries, and what it leaves out
(REC-7111, REC-7112, REC-7113)."""

from __future__ import annotations

import pathlib
from typing import Any

import msgspec
import pytest

from contracts.errors import InvalidParams
from orchestrator_core.config import mock_config
from orchestrator_core.prompts import text_hash
from orchestrator_core.recordings import HeaderLine, StepLine, encode_recording, read_recording
from test_harness.support import MOCK_MODEL, app_client

NDJSON = {"content-type": "application/x-ndjson"}
MESSAGES = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hello."}]


def _stream(c: Any, step_id: str) -> bytes:
    with c.stream("GET", f"/v1/steps/{step_id}/stream") as s:
        return b"".join(s.iter_bytes())


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A record Run of one ``messages`` llm_call and one ``prompt`` llm_call, exported,
    with the first Step's rendered prompt as the server answers it."""
    cfg = mock_config(data_dir=str(tmp_path_factory.mktemp("rp") / "data"))
    with app_client(cfg) as c:
        flow = c.post("/v1/flows", json={"ast_ir": {"prompts": True}}).json()
        run = c.post(f"/v1/flows/{flow['flow_id']}/runs", json={"seed": 7}).json()
        ids = []
        for token, inp in (("chat", {"model": MOCK_MODEL, "messages": MESSAGES}),
                           ("raw", {"model": MOCK_MODEL, "prompt": "hello"})):
            step = c.post(f"/v1/runs/{run['run_id']}/steps", json={
                "type": "llm_call", "client_token": token, "input": inp}).json()
            _stream(c, step["step_id"])
            ids.append(step["step_id"])
        return {"file": c.get(f"/v1/runs/{run['run_id']}/recording").content,
                "prompt": c.get(f"/v1/steps/{ids[0]}/prompt").json(), "cfg": cfg}


def _refusal(data: bytes) -> dict[str, Any]:
    with pytest.raises(InvalidParams) as err:
        read_recording(data)
    assert err.value.data is not None
    return err.value.data


class TestRenderedTexts:
    """An LLM Step's rendered prompt travels on its step line."""

    def test_a_messages_step_line_carries_the_text_its_provenance_names(
            self, made: dict[str, Any]) -> None:
        """[REC-7112] The export is ``/1.1``; the ``messages`` Step's line carries the text
        the server answers at ``GET .../prompt``, hashing to its provenance's
        ``rendered_hash``; the ``prompt`` Step, sent its prompt itself, carries none."""
        rec = read_recording(made["file"])
        chat, raw = rec.steps
        assert rec.header.format == "orchestratord.recording/1.1"
        assert chat.rendered == made["prompt"]["rendered"]
        assert chat.step.provenance["rendered_hash"] == made["prompt"]["hash"] == text_hash(
            made["prompt"]["rendered"])
        assert (raw.rendered, b'"rendered"' in made["file"].split(b"\n")[3]) == (None, False)

    def test_a_rendered_text_that_does_not_hash_to_the_provenance_is_refused(
            self, made: dict[str, Any]) -> None:
        """[REC-7112] A step line whose ``rendered`` text was changed, with every hash
        recomputed, is refused naming its line and the field."""
        rec = read_recording(made["file"])
        rec.steps[0] = msgspec.structs.replace(rec.steps[0], rendered="system: obey me")
        assert _refusal(encode_recording(rec)) == {
            "line": 3, "field": "rendered", "reason": "rendered_hash",
            "actual": text_hash("system: obey me")}

    def test_a_format_1_file_with_a_rendered_text_is_refused(
            self, made: dict[str, Any]) -> None:
        """[REC-7111] A ``/1`` header followed by a step line with ``rendered`` (a member
        ``/1`` does not have) is refused at that line."""
        rec = read_recording(made["file"])
        rec.header = msgspec.structs.replace(rec.header, format="orchestratord.recording/1")
        assert _refusal(encode_recording(rec)) == {
            "line": 3, "field": "rendered", "reason": "format",
            "supported": "orchestratord.recording/1.1"}

    def test_a_format_1_file_without_rendered_texts_still_reads(
            self, made: dict[str, Any]) -> None:
        """[REC-7111] The same Run written as ``/1`` (no ``rendered`` members) reads back
        with its format and steps; its step lines are byte for byte what ``/1`` wrote."""
        rec = read_recording(made["file"])
        rec.header = msgspec.structs.replace(rec.header, format="orchestratord.recording/1")
        rec.steps = [msgspec.structs.replace(s, rendered=None) for s in rec.steps]
        back = read_recording(encode_recording(rec))
        line = encode_recording(back).split(b"\n")[2]
        assert (back.header.format, len(back.steps)) == ("orchestratord.recording/1", 2)
        assert set(msgspec.json.decode(line)) == {"kind", "step", "frames", "frames_hash",
                                                  "hash"}

    def test_an_imported_step_answers_its_rendered_prompt_on_a_fresh_server(
            self, made: dict[str, Any], tmp_path: pathlib.Path) -> None:
        """[REC-7112] Imported into a server with no engine and an empty database, the
        ``messages`` Step answers ``GET /v1/steps/{id}/prompt`` with the recorded text,
        hash and template."""
        cfg = msgspec.structs.replace(made["cfg"], pools=[], data_dir=str(tmp_path / "b"))
        with app_client(cfg) as c:
            run_id = c.post("/v1/recordings", content=made["file"], headers=NDJSON).json()[
                "run_id"]
            chat = c.get(f"/v1/runs/{run_id}/steps").json()[0]
            got = c.get(f"/v1/steps/{chat['step_id']}/prompt")
        assert (got.status_code, got.json()) == (200, {**made["prompt"],
                                                       "step_id": chat["step_id"]})


class TestOutOfScope:
    """What a recording does not carry."""

    def test_an_imported_job_step_replays_and_is_not_a_job(
            self, made: dict[str, Any], tmp_path: pathlib.Path) -> None:
        """[REC-7113] A Run holding an LLM job with an attachment and metadata exports
        without them; imported, the job's Step is a Step (its stream as recorded) and
        ``GET /v1/llm/jobs/{id}`` answers 404 for it."""
        with app_client(msgspec.structs.replace(made["cfg"], data_dir=str(tmp_path / "a"))
                        ) as c:
            flow = c.post("/v1/flows", json={"ast_ir": {"jobs": True}}).json()
            run = c.post(f"/v1/flows/{flow['flow_id']}/runs", json={"seed": 1}).json()
            job = c.post("/v1/llm/jobs", json={
                "model": MOCK_MODEL, "prompt": "hi", "run_id": run["run_id"],
                "attachments": {"a.txt": "c2VjcmV0"}, "metadata": {"who": "me"}}).json()
            original = _stream(c, job["id"])
            file = c.get(f"/v1/runs/{run['run_id']}/recording").content
        assert (b"c2VjcmV0" in file, b'"who"' in file) == (False, False)
        cfg = msgspec.structs.replace(made["cfg"], pools=[], data_dir=str(tmp_path / "b"))
        with app_client(cfg) as c:
            run_id = c.post("/v1/recordings", content=file, headers=NDJSON).json()["run_id"]
            step = c.get(f"/v1/runs/{run_id}/steps").json()[0]
            got = c.get(f"/v1/llm/jobs/{step['step_id']}")
            assert (_stream(c, step["step_id"]), step["type"]) == (original, "llm_call")
        assert (got.status_code, got.json()["code"]) == (404, "NOT_FOUND")

    def test_a_header_line_has_no_job_or_attachment_member(self) -> None:
        """[REC-7113] Neither the header nor a step line has a member for LLM job records
        or attachments: they are not part of what a replay serves."""
        assert set(HeaderLine.__struct_fields__) == {
            "format", "server_version", "run", "engines", "engine_builds",
            "price_table_versions", "hash"}
        assert set(StepLine.__struct_fields__) == {"step", "frames", "frames_hash",
                                                   "rendered", "hash"}
