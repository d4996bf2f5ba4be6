"""A pytest plugin for replay suites in CI (REC-7040..REC-7043, specs/95_recordings.md).

Installed with the package (entry point ``pytest11``: ``orchestratord``). A test asks for
the ``recordings`` fixture and gets, for each committed recording, a ``replay`` Run served
by an in-process server that has no engine at all::

    def test_agent(recordings):
        replay = recordings["weather"]          # test_harness/recordings/weather.jsonl
        agent = MyAgent(base_url=replay.openai_base_url, api_key="unused")
        assert agent.run("What's the weather?") == "Sunny."
        replay.assert_matches()                 # every recorded step was replayed, equal

Options: ``--recordings DIR`` (or the ini option ``recordings_dir``) names the directory
of ``*.jsonl`` recordings, every one imported once per session; ``--record CONFIG``
re-records deliberately: the server runs that config's real pools (or ``--record URL``
uses a running server), each handle is a ``record`` Run of the recording's Flow with its
seed, policy and budgets, and a test that passes writes its Run back to the file.

A call the recording lacks fails where it is made, with the server's ``NONDETERMINISM``
naming the client_token and the field that differs from the nearest recorded call (the
OpenAI facade's error carries the same, in OpenAI's shape).
"""

from __future__ import annotations

import asyncio
import pathlib
import socket
import tempfile
import threading
from collections.abc import Generator, Iterator
from typing import Any

import httpx
import msgspec
import pytest

from contracts.errors import ErrorEnvelope, error_from_envelope
from orchestrator_core.recording_diff import Divergence, first_divergence
from orchestrator_core.recordings import Recording, read_recording
from orchestratord.client_recordings import RecordingClient

__all__ = ["Recordings", "Replay", "ServerThread", "recordings", "recordings_server",
           "replay_miss"]

_env = msgspec.json.Decoder(ErrorEnvelope)
NDJSON = {"content-type": "application/x-ndjson"}


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--recordings DIR``, ``--record CONFIG|URL`` and the ini ``recordings_dir``."""
    group = parser.getgroup("orchestratord", "orchestratord replay suites")
    group.addoption("--recordings", dest="orchestratord_recordings", default=None,
                    help="directory of *.jsonl recordings to replay (REC-7040)")
    group.addoption("--record", dest="orchestratord_record", default=None,
                    metavar="CONFIG|URL",
                    help="re-record against the real pools of this server config file, or "
                         "a running server's URL; passing tests rewrite their recording")
    parser.addini("recordings_dir", "directory of *.jsonl recordings to replay",
                  default="")


class ServerThread:
    """An orchestratord served by Granian in a thread of this process (a real loopback
    URL, so unchanged agent code and SDKs reach it).

    Args:
        config: the server config (``pools=[]``: a server with no engine).
        wait_path: what must answer 200 before the server counts as started:
            ``/health``, or ``/ready`` for a server whose pools must be ready.
        start_s: how long it may take (s).
    """

    def __init__(self, config: Any, wait_path: str = "/health", start_s: float = 30) -> None:
        from granian.constants import Interfaces
        from granian.server.embed import Server

        from orchestratord.app import create_app

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self._server = Server(create_app(config), address="127.0.0.1", port=port,
                              interface=Interfaces.ASGI, log_access=False)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="orchestratord", daemon=True)
        self._thread.start()
        for _ in range(int(start_s / 0.02)):  # each miss waits 20 ms on the server's thread
            try:
                if httpx.get(f"{self.url}{wait_path}", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            self._thread.join(0.02)
            if not self._thread.is_alive():
                raise RuntimeError("the in-process orchestratord exited at start")
        self.stop()
        raise RuntimeError(f"the in-process orchestratord did not answer {wait_path} "
                           f"within {start_s} s")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._server.serve())

    def stop(self) -> None:
        """Stop the server and wait for its thread."""
        self._loop.call_soon_threadsafe(self._server.stop)
        self._thread.join(30)
        if not self._thread.is_alive():
            self._loop.close()


def _check(resp: httpx.Response) -> httpx.Response:
    """The response, or its typed error (``NONDETERMINISM``, ``INVALID_PARAMS``, ...)."""
    if resp.status_code >= 400:
        raise error_from_envelope(_env.decode(resp.content))
    return resp


class Replay:
    """One recording bound to a Run of this test: a ``replay`` Run of the imported
    recording, or a ``record`` Run of its Flow with ``--record`` [REC-7040].

    Attributes:
        name: the recording's file name without ``.jsonl``.
        path: the file.
        recording: its checked content.
        base_url: the server's URL.
        run_id: the Run this test drives.
        mode: ``replay`` or ``record``.
        openai_base_url: the OpenAI-compatible base URL of that Run.
    """

    def __init__(self, name: str, path: pathlib.Path, recording: Recording, base_url: str,
                 run_id: str, mode: str) -> None:
        self.name, self.path, self.recording = name, path, recording
        self.base_url, self.run_id, self.mode = base_url, run_id, mode
        self.openai_base_url = f"{base_url}/v1/runs/{run_id}/openai/v1"

    def client(self) -> RecordingClient:
        """A new async client of the server (the caller closes it)."""
        return RecordingClient(self.base_url)

    def http(self) -> httpx.Client:
        """A new sync HTTP client of the server (the caller closes it)."""
        return httpx.Client(base_url=self.base_url, timeout=60)

    def run_step(self, body: dict[str, Any]) -> list[tuple[int | None, str, str]]:
        """Submit a Step to this Run and read its stream: ``(id, event, data)`` frames.

        Raises:
            OrchestratorError: the submission was refused (``Nondeterminism`` for a call
                the recording lacks, naming the field).
        """
        with self.http() as http:
            step = _check(http.post(f"/v1/runs/{self.run_id}/steps", json=body)).json()
            with http.stream("GET", f"/v1/steps/{step['step_id']}/stream") as s:
                raw = s.read().decode()
        frames = []
        for block in raw.split("\n\n"):
            fields = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line)
            if "event" in fields:
                seq = int(fields["id"]) if "id" in fields else None
                frames.append((seq, fields["event"], fields.get("data", "")))
        return frames

    def export(self) -> bytes:
        """This Run's recording as the server exports it now."""
        with self.http() as http:
            return _check(http.get(f"/v1/runs/{self.run_id}/recording")).content

    def divergence(self) -> Divergence | None:
        """The first difference between the recording and this Run (REC-7020)."""
        return first_divergence(self.recording, read_recording(self.export()))

    def assert_matches(self) -> None:
        """Every recorded Step was made again, with the recorded output [REC-7041].

        Raises:
            AssertionError: naming the first divergent step, field and token index.
        """
        found = self.divergence()
        if found is not None:
            raise AssertionError(f"replay of {self.name} diverged from its recording at "
                                 f"{found.describe()}")


class Recordings:
    """The session's server and its imported recordings; ``recordings[name]`` binds one
    to a new Run of the test (:class:`Replay`)."""

    def __init__(self, directory: pathlib.Path | None, base_url: str,
                 record: bool) -> None:
        self.directory = directory
        self.base_url = base_url
        self.record = record
        self.files: dict[str, pathlib.Path] = {}
        self.imported: dict[str, dict[str, Any]] = {}
        self.content: dict[str, Recording] = {}
        if directory is not None:
            self.files = {p.stem: p for p in sorted(directory.glob("*.jsonl"))}
        self.bound: list[Replay] = []
        with httpx.Client(base_url=base_url, timeout=120) as http:
            for name, path in self.files.items():
                data = path.read_bytes()
                self.content[name] = read_recording(data)
                if not record:
                    self.imported[name] = _check(http.post(
                        "/v1/recordings", content=data, headers=NDJSON)).json()

    def names(self) -> list[str]:
        """The recordings' names, sorted."""
        return sorted(self.files)

    def __getitem__(self, name: str) -> Replay:
        """A new Run for the recording ``name``: a replay of it, or (``--record``) a
        record Run of its Flow with its seed, policy and budgets."""
        if name not in self.files:
            raise KeyError(f"no recording {name!r} in {self.directory}; "
                           f"have {self.names()}")
        rec = self.content[name]
        with httpx.Client(base_url=self.base_url, timeout=60) as http:
            if self.record:
                body = rec.header.run.body
                flow = _check(http.post("/v1/flows", json={
                    **rec.flow.content, "labels": rec.flow.labels or {}})).json()
                run = _check(http.post(f"/v1/flows/{flow['flow_id']}/runs", json={
                    "mode": "record", "seed": rec.header.run.seed,
                    **{k: body[k] for k in ("policy", "budgets", "pool_policy", "labels")
                       if body.get(k) is not None}})).json()
            else:
                imported = self.imported[name]
                run = _check(http.post(f"/v1/flows/{imported['flow_id']}/runs", json={
                    "mode": "replay", "replay_of": imported["run_id"]})).json()
        replay = Replay(name, self.files[name], rec, self.base_url, run["run_id"],
                        "record" if self.record else "replay")
        self.bound.append(replay)
        return replay


def _directory(config: pytest.Config) -> pathlib.Path | None:
    opt = config.getoption("orchestratord_recordings")
    ini = config.getini("recordings_dir")
    chosen = opt or ini
    if not chosen:
        return None
    path = pathlib.Path(chosen)
    return path if path.is_absolute() or opt else config.rootpath / path


@pytest.fixture(scope="session")
def recordings_server(pytestconfig: pytest.Config) -> Iterator[str]:
    """The URL of the session's server: an in-process one with no engine (or, with
    ``--record CONFIG``, that config's pools; with ``--record URL``, that server)."""
    from orchestrator_core.config import load_config, mock_config

    record = pytestconfig.getoption("orchestratord_record")
    if record and record.startswith(("http://", "https://")):
        yield record.rstrip("/")
        return
    with tempfile.TemporaryDirectory(prefix="orchestratord-replay-") as data_dir:
        if record:  # the config's real pools, ready before the first test
            cfg = msgspec.structs.replace(load_config(record), data_dir=data_dir)
            server = ServerThread(cfg, wait_path="/ready", start_s=600)
        else:
            server = ServerThread(msgspec.structs.replace(mock_config(data_dir=data_dir),
                                                          pools=[]))
        try:
            yield server.url
        finally:
            server.stop()


@pytest.fixture(scope="session")
def _recordings_session(pytestconfig: pytest.Config, recordings_server: str) -> Recordings:
    """Every recording of the directory, imported once per session."""
    return Recordings(_directory(pytestconfig), recordings_server,
                      record=bool(pytestconfig.getoption("orchestratord_record")))


@pytest.fixture
def recordings(_recordings_session: Recordings,
               request: pytest.FixtureRequest) -> Iterator[Recordings]:
    """The recordings, each bound to a new Run of this test on first use [REC-7040]; with
    ``--record``, a test that passed writes its Runs back to their files [REC-7043]."""
    session = _recordings_session
    session.bound = []
    yield session
    report = getattr(request.node, "_orchestratord_call", None)
    if session.record and report is not None and report.passed:
        for replay in session.bound:
            replay.path.write_bytes(replay.export())


def replay_miss(exc: BaseException) -> str | None:
    """What a failed test's exception says about a replay miss [REC-7041]: a
    ``NONDETERMINISM`` from the native client (:class:`OrchestratorError`) or from an
    OpenAI SDK (its ``code`` and ``param``), as one line naming the field; else None."""
    code = getattr(exc, "code", None)
    if str(code) != "NONDETERMINISM":
        return None
    data = getattr(exc, "data", None) or {}
    field = data.get("field") if isinstance(data, dict) else None
    field = field or getattr(exc, "param", None)
    body = getattr(exc, "body", None)  # an OpenAI SDK error: the server's own message
    message = (body.get("message") if isinstance(body, dict) else None) or \
        getattr(exc, "message", None) or str(exc)
    return f"NONDETERMINISM at {field}: {message}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep the call phase's report on the item (``--record`` writes only on a pass), and
    add the section ``orchestratord replay`` to a test failed by a replay miss."""
    report = yield
    if call.when == "call":
        item._orchestratord_call = report  # type: ignore[attr-defined]
        miss = replay_miss(call.excinfo.value) if call.excinfo is not None else None
        if miss is not None:
            report.sections.append(("orchestratord replay", miss))
    return report
