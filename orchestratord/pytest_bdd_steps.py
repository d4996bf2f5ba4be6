"""A pytest-bdd step library for replay scenarios (REC-7042, specs/95_recordings.md).

Enable it in a ``conftest.py`` with ``pytest_plugins = ["orchestratord.pytest_bdd_steps"]``
(it needs ``pytest-bdd``) and give your agent as the fixture ``replay_agent``: a callable
that takes the :class:`~orchestratord.pytest_plugin.Replay` and runs the agent against
it (``replay.openai_base_url``, ``replay.base_url`` and ``replay.run_id``)::

    Feature: The weather agent
      Scenario: It answers as recorded
        Given the recording "weather"
        When the agent replays it
        Then every step output equals the recording
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from pytest_bdd import given, parsers, then, when

from orchestratord.pytest_plugin import Recordings, Replay

__all__ = ["agent_replays", "every_output_equals", "the_recording"]


@given(parsers.parse('the recording "{name}"'), target_fixture="replay")
def the_recording(recordings: Recordings, name: str) -> Replay:
    """A new replay Run of the committed recording ``name`` [REC-7042]."""
    return recordings[name]


@when("the agent replays it")
def agent_replays(replay: Replay, request: pytest.FixtureRequest) -> None:
    """Run the ``replay_agent`` fixture's callable against the replay [REC-7042].

    Raises:
        pytest.UsageError: no ``replay_agent`` fixture is defined.
    """
    try:
        agent: Callable[[Replay], Any] = request.getfixturevalue("replay_agent")
    except pytest.FixtureLookupError:
        raise pytest.UsageError("define a `replay_agent` fixture returning a callable "
                                "that runs your agent against a Replay") from None
    agent(replay)


@then("every step output equals the recording")
def every_output_equals(replay: Replay) -> None:
    """Every recorded Step was made again with the recorded frames [REC-7042]."""
    replay.assert_matches()
