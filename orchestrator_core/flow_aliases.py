"""Schema v8: Flows re-addressed under RFC 8785 canonical JSON (NERVE-4048).

Before v8 a Flow's hash (and so its flow_id) was blake3 over msgspec's sorted encoding,
which writes ``1.0``, ``1e21`` and ``-0.0`` where RFC 8785 writes ``1``, ``1e+21`` and
``0``. The migration recomputes every stored Flow's hash in the new form; where it
changed, the row takes the new hash (so reposting the same content finds it) and keeps
its flow_id (Runs and Facts point at it), and ``flow_aliases`` maps the old hash and the
flow_id the new hash derives to the row, so both old and new addresses keep resolving.
"""

from __future__ import annotations

import sqlite3

import msgspec

from orchestrator_core.canonical import flow_address

__all__ = ["FLOW_BY_HASH", "FLOW_BY_ID", "migrate_v8"]

FLOW_BY_ID = (
    "SELECT f.* FROM flow_aliases a JOIN flows f ON f.flow_id = a.flow_id"
    " WHERE a.alias = :id LIMIT 1")
"""A Flow by an alias of its id (the caller checks the tenant); read after a miss."""

FLOW_BY_HASH = (
    "SELECT f.* FROM flow_aliases a JOIN flows f ON f.flow_id = a.flow_id"
    " WHERE a.alias = :hash AND a.tenant = :tenant LIMIT 1")
"""A tenant's Flow by a pre-v8 hash; read after a miss."""


def migrate_v8(conn: sqlite3.Connection) -> int:
    """Create ``flow_aliases`` and re-address every stored Flow (call inside the
    migration's transaction).

    A Flow whose new hash another row of its tenant already holds (two contents that
    were distinct before and are equal under RFC 8785, such as ``1`` and ``1.0``) keeps
    its old hash; the new address resolves to the other row.

    Returns:
        How many Flows changed hash.
    """
    conn.execute(
        "CREATE TABLE IF NOT EXISTS flow_aliases ("
        " alias TEXT NOT NULL,"
        " tenant TEXT NOT NULL,"
        " flow_id TEXT NOT NULL REFERENCES flows(flow_id),"
        " PRIMARY KEY (alias, tenant)) WITHOUT ROWID")
    changed = 0
    rows = conn.execute("SELECT flow_id, tenant, hash, ast_ir, tools, config FROM flows"
                        " ORDER BY rowid").fetchall()
    for flow_id, tenant, old_hash, ast_ir, tools, config in rows:
        content = {"ast_ir": msgspec.json.decode(ast_ir), "tools": msgspec.json.decode(tools),
                   "config": msgspec.json.decode(config)}
        new_hash, new_id = flow_address(content, tenant)
        if new_hash == old_hash:
            continue
        taken = conn.execute("SELECT 1 FROM flows WHERE tenant = ? AND hash = ?",
                             (tenant, new_hash)).fetchone()
        if taken is None:
            conn.execute("UPDATE flows SET hash = ? WHERE flow_id = ?", (new_hash, flow_id))
            changed += 1
        conn.executemany("INSERT OR IGNORE INTO flow_aliases (alias, tenant, flow_id)"
                         " VALUES (?, ?, ?)",
                         [(old_hash, tenant, flow_id)]
                         + ([(new_id, tenant, flow_id)] if new_id != flow_id else []))
    return changed
