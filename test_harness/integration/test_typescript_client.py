"""The TypeScript package against a live server: built with ``npm ci`` and ``tsc``, tested
with Node's own test runner [NERVE-4116] [NERVE-4113] [NERVE-4114] [NERVE-4115].

A bearer-token server process (Granian, the mock engine at 50 tokens a second, so a job
can be cancelled mid-stream) runs on loopback; ``node --test`` runs the package's tests
with its base URL and token in ``ORCHESTRATORD_URL`` and ``ORCHESTRATORD_TOKEN``. The live
file plays the client contract's scenario: discover, enqueue with a JSON-schema
contract, token events and a final ``done`` with no ``error``; cancel mid-stream; a
dropped connection throws ``ERR_STREAM_DISCONNECTED`` and the stream resumes after it.
Skipped, naming why, only when Node or npm is not installed (CI installs both).
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess

import msgspec
import pytest

from orchestrator_core.config import mock_config
from test_harness.support import server_process

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "contracts" / "typescript"
NODE, NPM = shutil.which("node"), shutil.which("npm")
TOKEN = "tok-typescript"

pytestmark = pytest.mark.skipif(NODE is None or NPM is None,
                                reason="node and npm are not installed (CI installs them)")


def _run(argv: list[str], env: dict[str, str] | None = None,
         timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=PACKAGE, capture_output=True, text=True, timeout=timeout,
                          check=False, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def built() -> pathlib.Path:
    """The package installed from its lockfile and compiled to ``dist/``."""
    assert NPM is not None
    npx = str(pathlib.Path(NPM).with_name("npx"))
    for argv in ([NPM, "ci", "--no-audit", "--no-fund"], [npx, "tsc", "-p", "tsconfig.json"]):
        done = _run(argv)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return PACKAGE / "dist"


def test_the_package_passes_the_contract_scenario_against_a_live_server(
        built: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """``node --test`` passes every test, the four live ones included (none skipped),
    against a real server process."""
    cfg = mock_config(data_dir=str(tmp_path / "data"))
    pool = msgspec.structs.replace(cfg.pools[0], options={**cfg.pools[0].options,
                                                         "tokens_per_s": 50, "length": 100})
    cfg = msgspec.structs.replace(cfg, pools=[pool], auth_tokens={TOKEN: "alpha"})
    assert NODE is not None
    with server_process(cfg, tmp_path / "data") as (_proc, url):
        done = _run([NODE, "--test", "--test-reporter=tap", "test/"],
                    env={"ORCHESTRATORD_URL": url, "ORCHESTRATORD_TOKEN": TOKEN})
    summary = dict(re.findall(r"^# (tests|pass|fail|skipped|cancelled) (\d+)$", done.stdout,
                              re.M))
    assert (done.returncode, summary) == (0, {"tests": "11", "pass": "11", "fail": "0",
                                              "skipped": "0", "cancelled": "0"}), \
        done.stdout[-4000:] + done.stderr[-2000:]
    assert (built / "index.js").is_file()
