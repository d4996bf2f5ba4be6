#!/usr/bin/env bash
# A throwaway PostgreSQL cluster (PG-9050): tools/pg.sh start DIR prints its DSN,
# tools/pg.sh stop DIR stops it and removes DIR. See tools/pg_cluster.py.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-$root/.venv/bin/python}"
[ -x "$py" ] || py=python3
cd "$root"
exec "$py" -m tools.pg_cluster "$@"
