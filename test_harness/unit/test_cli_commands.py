"""Every command of the ``orchestratord`` CLI has a test (REC-7116): the commands its
``--help`` lists are exactly the ones named here, each with the test that runs it."""

from __future__ import annotations

import importlib
import pathlib
import re

import pytest

from orchestratord.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[2]

TESTED_BY = {
    "serve": "unit.test_config_check::TestServeRefusesBadConfig::"
             "test_empty_models_stops_serve_with_one_line",
    "openapi": "unit.test_cli_commands::TestCommands::"
               "test_openapi_prints_the_committed_document",
    "config check": "unit.test_config_check::TestConfigCheck::"
                    "test_a_good_file_passes_and_names_the_per_user_data_dir",
    "runs list": "integration.test_cli_browse::TestRunsCommands::"
                 "test_runs_list_json_is_the_apis_answer",
    "runs show": "integration.test_cli_browse::TestRunsCommands::"
                 "test_runs_show_table_has_a_row_per_step",
    "runs tail": "integration.test_cli_browse::TestRunsCommands::"
                 "test_runs_tail_prints_a_steps_text",
    "runs export": "unit.test_cli_recordings::TestExportImport::"
                   "test_a_10000_frame_export_shows_progress_and_takes_under_2_s",
    "runs import": "unit.test_cli_recordings::TestExportImport::"
                   "test_import_answers_the_new_run",
    "runs diff": "unit.test_cli_recordings::TestDiff::"
                 "test_a_forced_divergence_prints_the_index_and_both_tokens",
    "runs verify": "unit.test_cli_recordings::TestVerify::"
                   "test_verify_refuses_a_flipped_byte_naming_the_line",
    "flows list": "integration.test_cli_browse::TestFlowsAndPools::"
                  "test_flows_list_and_show_json_are_the_apis_answers",
    "flows show": "integration.test_cli_browse::TestFlowsAndPools::test_flows_tables",
    "pools": "integration.test_cli_browse::TestFlowsAndPools::test_pools_json_and_table",
}
"""Each command, and one test that runs it through ``main`` or ``python -m
orchestratord`` (its module under ``test_harness``, class and function)."""


def _choices(capsys: pytest.CaptureFixture[str], *group: str) -> list[str]:
    """The subcommands ``orchestratord [group] --help`` lists."""
    with pytest.raises(SystemExit):
        main([*group, "--help"])
    found = re.search(r"\{([a-z,]+)\}", capsys.readouterr().out)
    assert found is not None
    return found.group(1).split(",")


class TestCommands:
    """The command list and each command's test."""

    def test_every_command_is_named_with_a_test_that_exists_and_runs_it(
            self, capsys: pytest.CaptureFixture[str]) -> None:
        """[REC-7116] The commands the CLI lists are exactly those of ``TESTED_BY``, and
        each named test exists and spells its command's words in its source."""
        commands = []
        for top in _choices(capsys):
            subs = _choices(capsys, top) if top in ("config", "runs", "flows") else []
            commands += [f"{top} {s}" for s in subs] or [top]
        assert sorted(commands) == sorted(TESTED_BY)
        missing = []
        for command, node in TESTED_BY.items():
            module, cls, func = node.split("::")
            test = getattr(getattr(importlib.import_module(f"test_harness.{module}"), cls),
                           func, None)
            source = (ROOT / "test_harness" / (module.replace(".", "/") + ".py")).read_text()
            words = r'",\s*"'.join(command.split())
            if test is None or not re.search(rf'"{words}"', source):
                missing.append(command)
        assert missing == []

    def test_openapi_prints_the_committed_document(
            self, capsys: pytest.CaptureFixture[str]) -> None:
        """[REC-7116] ``orchestratord openapi`` prints the committed OpenAPI document,
        byte for byte, and exits 0."""
        status = main(["openapi"])
        assert (status, capsys.readouterr().out) == (
            0, (ROOT / "contracts" / "openapi.json").read_text(encoding="utf-8"))
