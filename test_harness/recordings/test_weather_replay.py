"""An example replay suite: the pytest plugin and the committed recording
``weather_agent.jsonl`` only, on a server with no engine (REC-7114)."""

from __future__ import annotations

import openai
import pytest

from orchestratord.pytest_plugin import Recordings
from test_harness.recordings.weather_agent import weather_agent

LYON = "oai:1d05f5021bf185479505f0ad145add0121e4b0139469082b9bffaff5d5938174:0"
"""The client_token of the agent's first call about Lyon: derived from the request body,
never at random (OAI-6004), so the same on every run."""


def test_the_agent_answers_as_recorded(recordings: Recordings) -> None:
    """[REC-7114] The unchanged agent gets the recorded answer, and every recorded call
    was made again with the recorded output."""
    replay = recordings["weather_agent"]
    assert weather_agent(replay.openai_base_url) == "plans stream token is facts a flow is pool"
    replay.assert_matches()


def test_a_changed_prompt_fails_with_the_nearest_recorded_call(
        recordings: Recordings) -> None:
    """[REC-7114] The agent asking about another city is refused with NONDETERMINISM at
    its first call, naming the nearest recorded call and the differing field."""
    replay = recordings["weather_agent"]
    with pytest.raises(openai.ConflictError) as err:
        weather_agent(replay.openai_base_url, city="Lyon")
    recorded = recordings.imported["weather_agent"]["run_id"]
    with replay.http() as http:
        nearest = http.get(f"/v1/runs/{recorded}/steps").json()[0]["step_id"]
    assert (err.value.status_code, err.value.code, err.value.param) == (
        409, "NONDETERMINISM", "messages[0].content")
    assert err.value.message == (
        f"Error code: 409 - the recording (run {recorded}) has no call like this one "
        f"(client_token {LYON}); the nearest recorded call is step {nearest}, which "
        "differs at messages[0].content")
