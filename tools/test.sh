#!/usr/bin/env bash
# Every check, as CI runs it: set up (idempotent), lint, type-check, then the whole
# test suite (unit, BDD on the mock engine, the real-engine determinism suite), then the
# unit and BDD suites a second time with PostgreSQL as the store (PG-9053, PG-9054).
#
# The PostgreSQL pass runs on the cluster named by ORCHESTRATORD_PG_DSN (.ci/run starts
# one), else on a throwaway cluster this script starts and removes (tools/pg.sh), else,
# with no PostgreSQL binaries installed, it is skipped with a notice. ORCHESTRATORD_PG=0
# skips it. Arguments go to pytest on both passes; with none, the second pass runs
# `-m "not engine" test_harness/unit test_harness/bdd`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/bootstrap.sh
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python tools/spec_trace.py --check
.venv/bin/python -m pytest -p no:cacheprovider "$@"
if [ "${ORCHESTRATORD_PG:-1}" = 0 ]; then
    echo "[test] PostgreSQL pass skipped (ORCHESTRATORD_PG=0)"
    exit 0
fi
dsn="${ORCHESTRATORD_PG_DSN:-}"
if [ -z "$dsn" ]; then
    if ! .venv/bin/python -c 'import tools.pg_cluster as p; p.bin_dir()' 2>/dev/null; then
        echo "[test] PostgreSQL pass skipped: no server binaries (apt-get install postgresql)"
        exit 0
    fi
    pg_dir="$(mktemp -d /tmp/orchestratord-pg.XXXXXX)"
    trap '.venv/bin/python -m tools.pg_cluster stop "$pg_dir"' EXIT
    dsn="$(.venv/bin/python -m tools.pg_cluster start "$pg_dir")"
fi
echo "[test] the unit and BDD suites on PostgreSQL ($dsn)"
if [ "$#" -eq 0 ]; then
    set -- -m "not engine" test_harness/unit test_harness/bdd
fi
ORCHESTRATORD_TEST_STORE="$dsn" .venv/bin/python -m pytest -p no:cacheprovider "$@"
