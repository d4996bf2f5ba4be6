"""A throwaway PostgreSQL cluster for tests, from the distribution's binaries (PG-9040).

:func:`start_cluster` runs ``initdb`` into ``<tmpdir>/data`` and starts the server on a
unix socket in ``<tmpdir>`` (no TCP listener, so nothing needs a network and parallel
clusters never collide on a port); :func:`stop_cluster` stops it. The cluster is for tests
only: ``fsync`` and ``full_page_writes`` are off. PostgreSQL refuses to run as root, so
under root both run as the ``postgres`` user (``runuser``), and ``tmpdir`` is chowned to
it. Another tool (``tools/pg.sh``) may reuse these two functions; :func:`session_dsn`
shares one cluster between the test modules of a process.
"""

from __future__ import annotations

import atexit
import glob
import os
import pathlib
import pwd
import shutil
import subprocess
import tempfile
import time

import pytest

__all__ = ["bin_dir", "require_binaries", "session_dsn", "start_cluster", "stop_cluster",
           "stop_shared"]

_OWNER = "postgres"
"""The user the cluster runs as when the tests run as root."""

_shared: dict[str, str] = {}


def bin_dir() -> pathlib.Path | None:
    """The newest ``/usr/lib/postgresql/<major>/bin`` holding ``initdb``, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return pathlib.Path(found[-1]).parent if found else None


def require_binaries() -> None:
    """Skip the calling test when this machine has no PostgreSQL server binaries, unless
    ``ORCHESTRATORD_REQUIRE_PG=1`` (set by ``.ci/run``, which installs them): there a
    missing server is a failure, so the PostgreSQL tests can never pass by skipping."""
    if bin_dir() is not None:
        return
    reason = "no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb)"
    if os.environ.get("ORCHESTRATORD_REQUIRE_PG") == "1":
        pytest.fail(f"{reason}, but ORCHESTRATORD_REQUIRE_PG=1")
    pytest.skip(reason)


def _run(argv: list[str]) -> None:
    """Run a PostgreSQL binary, as :data:`_OWNER` when we are root."""
    prefix = ["runuser", "-u", _OWNER, "--"] if os.geteuid() == 0 else []
    subprocess.run([*prefix, *argv], check=True, capture_output=True, timeout=120)


def start_cluster(tmpdir: str | pathlib.Path) -> str:
    """Create and start a cluster in ``tmpdir`` [PG-9040].

    Args:
        tmpdir: an empty directory the cluster user can reach (under root it is chowned
            to ``postgres``, so its parents must be traversable, as ``/tmp`` is); its
            path must be short (a unix socket path is at most 107 bytes).

    Returns:
        A libpq DSN of the cluster's ``postgres`` database over the socket, superuser
        ``postgres``, trust authentication.

    Raises:
        FileNotFoundError: no PostgreSQL binaries are installed.
        subprocess.CalledProcessError: ``initdb`` or ``pg_ctl`` failed.
    """
    binaries = bin_dir()
    if binaries is None:
        raise FileNotFoundError("no /usr/lib/postgresql/*/bin/initdb")
    root = pathlib.Path(tmpdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        owner = pwd.getpwnam(_OWNER)
        os.chown(root, owner.pw_uid, owner.pw_gid)
    data = root / "data"
    _run([str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
          "-E", "UTF8", "--locale=C", "--no-sync"])
    _run([str(binaries / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w",
          "-o", f"-k {root} -c listen_addresses='' -c fsync=off -c full_page_writes=off"
                " -c max_connections=200", "start"])
    return f"host={root} port=5432 user=postgres dbname=postgres"


def stop_cluster(tmpdir: str | pathlib.Path) -> None:
    """Stop the cluster :func:`start_cluster` started in ``tmpdir`` (immediate shutdown)
    and remove the directory; a directory with no running cluster is only removed."""
    binaries = bin_dir()
    root = pathlib.Path(tmpdir).resolve()
    if binaries is not None and (root / "data" / "postmaster.pid").exists():
        _run([str(binaries / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "-w",
              "stop"])
    for _ in range(50):  # the server may still be writing its last files
        shutil.rmtree(root, ignore_errors=True)
        if not root.exists():
            return
        time.sleep(0.1)


def session_dsn() -> str:
    """The DSN of this process's shared test cluster, started in a new directory under
    the temporary directory on the first call and stopped when the process exits
    [PG-9040].

    Raises:
        FileNotFoundError: no PostgreSQL binaries are installed.
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
