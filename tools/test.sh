#!/usr/bin/env bash
# Every check, as CI runs it: set up (idempotent), lint, type-check, then the whole
# test suite (unit, BDD on the mock engine, the real-engine determinism suite).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/bootstrap.sh
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python tools/spec_trace.py --check
.venv/bin/python -m pytest -p no:cacheprovider "$@"
