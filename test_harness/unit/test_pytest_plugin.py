"""The replay plugin, run by pytest's own ``pytester`` on a user's test files and the
committed recording ``test_harness/recordings/weather_agent.jsonl`` (REC-7040..REC-7043)."""

from __future__ import annotations

import importlib.metadata
import pathlib
import re
import shutil
import tempfile
from collections.abc import Iterator

import msgspec
import pytest

from orchestrator_core.config import mock_config
from orchestrator_core.recording_diff import first_divergence
from orchestrator_core.recordings import read_recording
from orchestratord.pytest_plugin import ServerThread
from test_harness.recordings.weather_agent import RECORDING, record

pytest_plugins = ["pytester"]


def _plugin() -> list[str]:
    """``-p orchestratord.pytest_plugin`` unless the installed entry point loads it."""
    points = importlib.metadata.entry_points(group="pytest11")
    loaded = any(p.value == "orchestratord.pytest_plugin" for p in points)
    quiet = ["-W", "ignore::pytest.PytestAssertRewriteWarning"]  # imported by this module
    return quiet if loaded else [*quiet, "-p", "orchestratord.pytest_plugin"]


USER_TESTS = '''
from test_harness.recordings.weather_agent import weather_agent

def test_the_agent_answers_as_recorded(recordings):
    replay = recordings["weather_agent"]
    assert weather_agent(replay.openai_base_url) == ANSWER
    replay.assert_matches()

def test_a_changed_prompt_fails_with_the_nearest_call(recordings):
    replay = recordings["weather_agent"]
    weather_agent(replay.openai_base_url, city="Lyon")
'''


ROOT = pathlib.Path(__file__).resolve().parents[2]
"""This checkout: the user's suite runs in a subprocess that imports its packages."""
EXAMPLE = ROOT / "test_harness" / "recordings" / "test_weather_replay.py"
"""The committed example replay suite (REC-7114)."""


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A user's project: the committed recording in ``recordings/``; its pytest runs in a
    process of its own (``runpytest_subprocess``), as in CI."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    (pytester.path / "recordings").mkdir()
    shutil.copy(RECORDING, pytester.path / "recordings" / "weather_agent.jsonl")
    return pytester


def _answer() -> str:
    """The recorded answer: the text of the recording's last Step's output."""
    last = read_recording(RECORDING.read_bytes()).steps[-1]
    return str(msgspec.json.decode(last.frames[-1][2])["output"]["text"])


class TestReplaySuite:
    """A user's suite replays the committed recording with no engine."""

    def test_a_user_test_passes_and_a_changed_prompt_fails_with_the_field(
            self, suite: pytest.Pytester) -> None:
        """[REC-7040] [REC-7041] The unchanged agent replays on a server with no engine and
        passes, the session in under 5 s; the same agent asking about another city fails with
        NONDETERMINISM naming the nearest recorded call and the differing field."""
        suite.makepyfile(test_agent=f"ANSWER = {_answer()!r}\n" + USER_TESTS)
        result = suite.runpytest_subprocess(*_plugin(), "--recordings", "recordings", "-p",
                                            "no:cacheprovider")
        result.assert_outcomes(passed=1, failed=1)
        # the session's own time, as pytest reports it (the interpreter's start excluded)
        elapsed = float(re.findall(r" in ([0-9.]+)s", result.stdout.str())[-1])
        result.stdout.fnmatch_lines([
            "*test_a_changed_prompt_fails_with_the_nearest_call*",
            "*orchestratord replay*",
            "NONDETERMINISM at messages[[]0[]].content: the recording (run run_*) has no "
            "call like this one (client_token oai:*); the nearest recorded call is step "
            "stp_*, which differs at messages[[]0[]].content"])
        assert elapsed < 5.0

    def test_the_committed_example_suite_passes_alone_in_under_5_s(
            self, suite: pytest.Pytester) -> None:
        """[REC-7114] ``test_harness/recordings/test_weather_replay.py``, copied into a
        project of its own with the recording and nothing but the plugin's ini option,
        passes both its tests (the second asserts the changed prompt's diff message) with
        no engine, the session in under 5 s."""
        shutil.copy(EXAMPLE, suite.path / "test_weather_replay.py")
        suite.makeini("[pytest]\nrecordings_dir = recordings\n")
        result = suite.runpytest_subprocess(*_plugin(), "-p", "no:cacheprovider")
        result.assert_outcomes(passed=2)
        elapsed = float(re.findall(r" in ([0-9.]+)s", result.stdout.str())[-1])
        assert elapsed < 5.0

    def test_an_agent_that_stops_early_fails_assert_matches(
            self, suite: pytest.Pytester) -> None:
        """[REC-7041] A replay that makes only the first recorded call fails
        ``assert_matches`` naming the recorded step it did not make."""
        suite.makepyfile(test_short='''
from openai import OpenAI

def test_one_call_only(recordings):
    replay = recordings["weather_agent"]
    client = OpenAI(base_url=replay.openai_base_url, api_key="unused", max_retries=0)
    client.chat.completions.create(model="mock:echo-1", max_tokens=12, temperature=0,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}])
    replay.assert_matches()
''')
        suite.makeini("[pytest]\nrecordings_dir = recordings\n")
        result = suite.runpytest_subprocess(*_plugin(), "-p", "no:cacheprovider")
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines(["*replay of weather_agent diverged from its recording "
                                     "at step 1 (*), step: expected *, actual None*"])

    def test_the_bdd_step_library_replays_a_scenario(self, suite: pytest.Pytester) -> None:
        """[REC-7042] Given the recording, When the agent replays it, Then every step
        output equals the recording: a Gherkin scenario passes with the step library."""
        suite.makeconftest('''
import pytest
from test_harness.recordings.weather_agent import weather_agent

pytest_plugins = ["orchestratord.pytest_bdd_steps"]

@pytest.fixture
def replay_agent():
    return lambda replay: weather_agent(replay.openai_base_url)
''')
        (suite.path / "agent.feature").write_text(
            "Feature: The weather agent\n"
            "  Scenario: It answers as recorded\n"
            '    Given the recording "weather_agent"\n'
            "    When the agent replays it\n"
            "    Then every step output equals the recording\n")
        suite.makepyfile(test_bdd='from pytest_bdd import scenarios\n'
                                  'scenarios("agent.feature")\n')
        result = suite.runpytest_subprocess(*_plugin(), "--recordings", "recordings", "-p",
                                 "no:cacheprovider")
        result.assert_outcomes(passed=1)


@pytest.fixture
def mock_server() -> Iterator[str]:
    """A server with the mock engine in this process (a "real pool" to re-record on)."""
    with tempfile.TemporaryDirectory() as data_dir:
        server = ServerThread(mock_config(data_dir=data_dir))
        try:
            yield server.url
        finally:
            server.stop()


class TestRecord:
    """``--record`` re-records deliberately."""

    def test_record_rewrites_the_recording_of_a_passing_test(
            self, suite: pytest.Pytester, mock_server: str) -> None:
        """[REC-7043] With ``--record URL`` the agent runs on that server's pool and the
        passing test writes its Run over the file: a new, valid recording of another Run
        that agrees with the old one step for step."""
        suite.makepyfile(test_agent=f"ANSWER = {_answer()!r}\n" + USER_TESTS.split(
            "\ndef test_a_changed")[0])
        path = suite.path / "recordings" / "weather_agent.jsonl"
        before = read_recording(path.read_bytes())
        result = suite.runpytest_subprocess(*_plugin(), "--recordings", "recordings", "--record",
                                 mock_server, "-p", "no:cacheprovider")
        result.assert_outcomes(passed=1)
        after = read_recording(path.read_bytes())
        assert after.header.run.run_id != before.header.run.run_id
        assert (after.header.run.mode, after.header.run.seed) == ("record", 42)
        assert first_divergence(before, after) is None

    def test_record_with_a_config_file_runs_its_pools_in_process(
            self, suite: pytest.Pytester) -> None:
        """[REC-7043] ``--record CONFIG`` starts that config's pools (here the mock
        engine's) in the test process and rewrites the recording of the passing test."""
        suite.makepyfile(test_agent=f"ANSWER = {_answer()!r}\n" + USER_TESTS.split(
            "\ndef test_a_changed")[0])
        config = suite.path / "server.json"
        config.write_bytes(msgspec.json.encode(mock_config(data_dir=str(suite.path / "d"))))
        path = suite.path / "recordings" / "weather_agent.jsonl"
        before = read_recording(path.read_bytes())
        result = suite.runpytest_subprocess(*_plugin(), "--recordings", "recordings",
                                            "--record", str(config), "-p", "no:cacheprovider")
        result.assert_outcomes(passed=1)
        after = read_recording(path.read_bytes())
        assert after.header.run.run_id != before.header.run.run_id
        assert first_divergence(before, after) is None

    def test_the_committed_recording_is_the_agents(self, tmp_path: pathlib.Path) -> None:
        """[REC-7043] Recording the agent again on the mock engine gives a recording that
        agrees with the committed one step for step."""
        record(tmp_path / "again.jsonl")
        assert first_divergence(read_recording(RECORDING.read_bytes()),
                                read_recording((tmp_path / "again.jsonl").read_bytes())) is None
