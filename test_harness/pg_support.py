"""The tests' PostgreSQL cluster (PG-9040): one throwaway cluster per test process, from
the distribution's binaries, through :mod:`tools.pg_cluster` (the same helper ``tools/pg.sh``,
the benchmarks and the crash loop use).

:func:`session_dsn` starts it in a new directory under the temporary directory on first
use and stops it when the process exits; :func:`require_binaries` skips a PostgreSQL test
on a machine without the server, unless ``ORCHESTRATORD_REQUIRE_PG=1``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pathlib
import signal
import subprocess
import tempfile
from collections.abc import Iterator

import msgspec
import pytest

from orchestrator_core.config import ServerConfig
from tools import pg_cluster
from tools.servers import start_server, stop_server

__all__ = ["bin_dir", "require_binaries", "servers_on_one_schema", "session_dsn",
           "start_cluster", "stop_cluster", "stop_shared"]

start_cluster = pg_cluster.start_cluster
stop_cluster = pg_cluster.stop_cluster

_shared: dict[str, str] = {}


def bin_dir() -> pathlib.Path | None:
    """The directory of the newest installed server binaries, or None
    (:func:`tools.pg_cluster.bin_dir`)."""
    try:
        return pg_cluster.bin_dir()
    except pg_cluster.PgBinariesMissing:
        return None


def require_binaries() -> None:
    """Skip the calling test when this machine has no PostgreSQL server binaries, unless
    ``ORCHESTRATORD_REQUIRE_PG=1`` (set by ``.ci/run``, which installs them): there a
    missing server is a failure, so the PostgreSQL tests can never pass by skipping."""
    if bin_dir() is not None:
        return
    reason = "no PostgreSQL server binaries (initdb, pg_ctl, postgres)"
    if os.environ.get("ORCHESTRATORD_REQUIRE_PG") == "1":
        pytest.fail(f"{reason}, but ORCHESTRATORD_REQUIRE_PG=1")
    pytest.skip(reason)


def session_dsn() -> str:
    """The DSN of this process's shared test cluster, started in a new directory under
    the temporary directory on the first call and stopped when the process exits
    [PG-9040].

    Raises:
        tools.pg_cluster.PgBinariesMissing: no PostgreSQL binaries are installed.
    """
    if "dsn" not in _shared:
        where = tempfile.mkdtemp(prefix="pgt-")
        _shared["dir"], _shared["dsn"] = where, start_cluster(where)
        atexit.register(stop_shared)
    return _shared["dsn"]


def stop_shared() -> None:
    """Stop the shared cluster of :func:`session_dsn`, if it runs (idempotent)."""
    where = _shared.pop("dir", None)
    _shared.pop("dsn", None)
    if where is not None:
        stop_cluster(where)


@contextlib.contextmanager
def servers_on_one_schema(n: int, config: ServerConfig, schema: str, prefix: str) -> \
        Iterator[tuple[str, list[tuple[subprocess.Popen[bytes], str]]]]:
    """``n`` real ``orchestratord serve`` processes with ``config``, each with its own data
    dir, over one schema of a throwaway cluster of their own (PG-9105).

    Skips (or fails under ``ORCHESTRATORD_REQUIRE_PG=1``) without the server binaries.
    On exit every process still alive is continued (a test may have stopped one with
    SIGSTOP) and stopped, then the cluster is removed.

    Yields:
        ``(dsn, [(process, base_url)] * n)``.
    """
    require_binaries()
    base = pathlib.Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    db = pathlib.Path(tempfile.mkdtemp(prefix=f"{prefix}-db-"))  # the cluster user's own
    dsn = pg_cluster.start_cluster(db)
    path = base / "config.json"
    path.write_bytes(msgspec.json.encode(config))
    procs: list[tuple[subprocess.Popen[bytes], str]] = []
    try:
        for i in range(n):
            data = base / f"srv{i}"
            data.mkdir()
            procs.append(start_server(data_dir=str(data), extra=[
                "--config", str(path), "--store", dsn, "--store-schema", schema]))
        yield dsn, procs
    finally:
        for proc, _url in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                stop_server(proc)
        pg_cluster.stop_cluster(db)
