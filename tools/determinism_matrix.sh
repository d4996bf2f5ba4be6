#!/usr/bin/env bash
# The full real-engine determinism matrix (STREAM-2006, NERVE-4021, PLACE-5005):
# 32 seeds x 4 raw prompts (Japanese, French, two English) x temperatures 0, 0.8, 1.2,
# sequential and 4 concurrent clients on a 2-slot replica, each case checked against the
# engine called directly. CI runs the same tests on 3 seeds (tools/test.sh).
#
# Usage: tools/determinism_matrix.sh [pytest args]     (PYTHON=... to pick the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
ORCH_DETERMINISM_FULL=1 exec "$PY" -m pytest -p no:cacheprovider -q \
  test_harness/determinism/test_engine_tokens.py "$@"
