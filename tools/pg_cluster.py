"""A throwaway PostgreSQL cluster from the distribution's binaries (PG-9050, PG-9051).

``start_cluster(base)`` runs ``initdb`` into ``<base>/data`` and ``pg_ctl start`` with the
server listening only on a unix socket in ``<base>/sock`` (no TCP at all, so nothing
beyond this machine can reach it), and returns its DSN. ``stop_cluster(base)`` stops the
server and removes ``base``. ``initdb`` refuses to run as root, so under root the server
runs as the ``postgres`` system user (``runuser -u postgres --``) with ``base`` chowned to
it. The cluster trusts local connections for the superuser ``postgres``: it is for tests,
benchmarks and a local multi-process setup, never for data that matters.

From the shell (``tools/pg.sh`` is a thin wrapper)::

    python -m tools.pg_cluster start DIR   # prints the DSN
    python -m tools.pg_cluster dsn DIR     # prints it again
    python -m tools.pg_cluster stop DIR    # stops the server, removes DIR
"""

from __future__ import annotations

import argparse
import glob
import os
import pathlib
import pwd
import shutil
import subprocess
import sys

__all__ = ["SERVER_USER", "PgBinariesMissing", "bin_dir", "cluster_dsn", "main",
           "start_cluster", "stop_cluster"]

SERVER_USER = "postgres"
"""The unprivileged system user the server runs as when this process is root."""

_PORT = 5432
"""The port number in the socket's name (``.s.PGSQL.5432``); the socket directory is
private to the cluster, so it never collides with another server."""


class PgBinariesMissing(RuntimeError):
    """No ``initdb``/``pg_ctl`` were found (install the ``postgresql`` package)."""


def bin_dir() -> pathlib.Path:
    """The directory of the newest installed server binaries (PG-9050).

    Looks in ``$PG_BIN`` first, then Debian's ``/usr/lib/postgresql/<major>/bin``, then
    the directory of an ``initdb`` on ``PATH``.

    Returns:
        A directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Raises:
        PgBinariesMissing: none of those places has them.
    """
    candidates = [os.environ.get("PG_BIN", "")]
    majors = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                    key=lambda p: int(p.split("/")[-2]) if p.split("/")[-2].isdigit() else 0,
                    reverse=True)
    candidates += majors
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(pathlib.Path(on_path).resolve().parent))
    for cand in candidates:
        if cand and all((pathlib.Path(cand) / b).is_file()
                        for b in ("initdb", "pg_ctl", "postgres")):
            return pathlib.Path(cand)
    raise PgBinariesMissing("no PostgreSQL server binaries (initdb, pg_ctl, postgres); "
                            "install them with: apt-get install -y postgresql")


def _as_server_user(argv: list[str]) -> list[str]:
    """``argv`` run as :data:`SERVER_USER` when this process is root (initdb refuses root)."""
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", SERVER_USER, "--", *argv]


def _chown_tree(path: pathlib.Path) -> None:
    """Give ``path`` and everything under it to :data:`SERVER_USER` (root only)."""
    if os.geteuid() != 0:
        return
    user = pwd.getpwnam(SERVER_USER)
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.chown(os.path.join(root, name), user.pw_uid, user.pw_gid)
    os.chown(path, user.pw_uid, user.pw_gid)


def cluster_dsn(base: pathlib.Path) -> str:
    """The DSN of the cluster in ``base``: superuser ``postgres``, database ``postgres``,
    over the unix socket in ``<base>/sock``."""
    sock = pathlib.Path(base).resolve() / "sock"
    return f"postgresql://postgres@/postgres?host={sock}&port={_PORT}"


def start_cluster(base: pathlib.Path | str, *, durable: bool = False) -> str:
    """Create and start a cluster in ``base`` (PG-9050).

    Args:
        base: an empty or missing directory; it gets ``data/``, ``sock/`` and
            ``server.log``. Under root, every directory above it must be traversable by
            :data:`SERVER_USER` (``tempfile.mkdtemp()`` under ``/tmp`` is).
        durable: keep PostgreSQL's ``fsync`` and ``synchronous_commit``; the default
            turns them off, which a throwaway cluster can afford (a killed
            ``orchestratord`` still loses nothing; only a machine crash would).

    Returns:
        The DSN (see :func:`cluster_dsn`); it is also written to ``<base>/dsn``.

    Raises:
        PgBinariesMissing: the server binaries are not installed.
        subprocess.CalledProcessError: ``initdb`` or ``pg_ctl start`` failed (the log is
            in ``<base>/server.log``).
    """
    bins = bin_dir()
    base = pathlib.Path(base).resolve()
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o700)
    (base / "sock").mkdir(exist_ok=True)
    _chown_tree(base)
    data = base / "data"
    subprocess.run(_as_server_user([str(bins / "initdb"), "-D", str(data), "-U", "postgres",
                                    "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8",
                                    "--no-instructions"]),
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    opts = [f"-k {base / 'sock'}", "-c listen_addresses=''", f"-p {_PORT}",
            "-c max_connections=300"]
    if not durable:
        opts += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
    subprocess.run(_as_server_user([str(bins / "pg_ctl"), "start", "-w", "-t", "60",
                                    "-D", str(data), "-l", str(base / "server.log"),
                                    "-o", " ".join(opts)]),
                   check=True, stdout=subprocess.DEVNULL)
    dsn = cluster_dsn(base)
    (base / "dsn").write_text(dsn + "\n")
    return dsn


def stop_cluster(base: pathlib.Path | str) -> None:
    """Stop the cluster in ``base`` (fast shutdown: sessions are ended) and remove
    ``base`` (PG-9050). A missing or already stopped cluster is not an error."""
    base = pathlib.Path(base).resolve()
    data = base / "data"
    if (data / "postmaster.pid").exists():
        subprocess.run(_as_server_user([str(bin_dir() / "pg_ctl"), "stop", "-w", "-m", "fast",
                                        "-D", str(data)]),
                       check=False, stdout=subprocess.DEVNULL)
    shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """``start DIR`` (prints the DSN), ``dsn DIR``, ``stop DIR``; exit code 0 on success."""
    parser = argparse.ArgumentParser(prog="tools/pg.sh", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("start", "stop", "dsn"))
    parser.add_argument("dir", help="the cluster's directory (created by start, removed "
                        "by stop)")
    parser.add_argument("--durable", action="store_true",
                        help="keep fsync and synchronous_commit on")
    args = parser.parse_args(argv)
    if args.action == "start":
        try:
            print(start_cluster(args.dir, durable=args.durable))
        except PgBinariesMissing as exc:
            print(f"pg_cluster: {exc}", file=sys.stderr)
            return 1
    elif args.action == "stop":
        stop_cluster(args.dir)
    else:
        print(cluster_dsn(pathlib.Path(args.dir)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
