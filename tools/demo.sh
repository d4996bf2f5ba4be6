#!/usr/bin/env bash
# The main job in one command: set up, start the server on its default CPU pool
# (llama.cpp, SmolLM2-135M-Instruct), record a real 3-step flow, replay it,
# strict-replay it, and report whether the token streams are byte-identical.
# Extra arguments go to `python -m tools.demo` (e.g. --json).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/bootstrap.sh
exec .venv/bin/python -m tools.demo "$@"
