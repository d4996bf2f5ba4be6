"""Running on PostgreSQL: the throwaway cluster, the ``store`` key, and the suites'
second pass (PG-9050..PG-9054)."""

from __future__ import annotations

import os
import pathlib
import pwd
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from contracts.errors import InvalidParams
from orchestrator_core import store_open
from orchestrator_core.config import ServerConfig, load_config, mock_config
from orchestrator_core.store import SqliteStore
from orchestratord import cli
from test_harness import store_param
from test_harness.support import http_run_step, llm_step, pid_alive, table_counts
from tools import pg_cluster
from tools.servers import start_server, stop_server

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _have_binaries() -> bool:
    try:
        pg_cluster.bin_dir()
    except pg_cluster.PgBinariesMissing:
        return False
    return True


needs_pg = pytest.mark.skipif(not _have_binaries(), reason="no PostgreSQL server binaries")


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[pathlib.Path, str]]:
    """A throwaway cluster for this module: ``(its directory, its DSN)``."""
    base = pathlib.Path(tempfile.mkdtemp(prefix="orch-pg-test-"))
    dsn = pg_cluster.start_cluster(base)
    try:
        yield base, dsn
    finally:
        pg_cluster.stop_cluster(base)


def _one(dsn: str, sql: str) -> Any:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as con:
        row = con.execute(sql).fetchone()
        assert row is not None
        return row[0]


@needs_pg
class TestThrowawayCluster:
    """``tools/pg.sh``: a cluster from the distribution's binaries, on loopback only."""

    def test_the_dsn_reaches_the_server_over_a_private_socket_and_no_tcp(
            self, cluster: tuple[pathlib.Path, str]) -> None:
        """[PG-9050] [PG-9051] The DSN names the socket directory inside the cluster's
        own directory, and the server listens on no TCP address at all."""
        base, dsn = cluster
        assert (dsn, _one(dsn, "SHOW listen_addresses"),
                sorted(p.name for p in (base / "sock").iterdir() if p.is_socket())) == (
            f"postgresql://postgres@/postgres?host={base.resolve()}/sock&port=5432", "",
            [".s.PGSQL.5432"])

    def test_the_server_runs_as_an_unprivileged_user(
            self, cluster: tuple[pathlib.Path, str]) -> None:
        """[PG-9051] Under root the server process belongs to ``postgres`` (initdb
        refuses root); otherwise to the user who started it."""
        base, _dsn = cluster
        pid = int((base / "data" / "postmaster.pid").read_text().split()[0])
        owner = pwd.getpwuid(os.stat(f"/proc/{pid}").st_uid).pw_name
        expected = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        assert owner == expected

    def test_stop_ends_the_server_and_removes_its_directory(self) -> None:
        """[PG-9050] ``stop`` ends the server and removes everything it wrote; the shell
        script prints the DSN that ``dsn`` prints again."""
        base = pathlib.Path(tempfile.mkdtemp(prefix="orch-pg-stop-"))
        env = {**os.environ, "PYTHON": sys.executable}
        started = subprocess.run(["bash", str(ROOT / "tools" / "pg.sh"), "start", str(base)],
                                 capture_output=True, text=True, env=env, check=True)
        again = subprocess.run(["bash", str(ROOT / "tools" / "pg.sh"), "dsn", str(base)],
                               capture_output=True, text=True, env=env, check=True)
        pid = int((base / "data" / "postmaster.pid").read_text().split()[0])
        subprocess.run(["bash", str(ROOT / "tools" / "pg.sh"), "stop", str(base)], env=env,
                       check=True)
        assert (started.stdout, again.stdout, base.exists(),
                pid_alive(pid)) == (
            f"{pg_cluster.cluster_dsn(base)}\n", f"{pg_cluster.cluster_dsn(base)}\n",
            False, False)


class _FakePg:
    """Stands in for ``orchestrator_core.store_pg.PgStore``: records how it was built."""

    def __init__(self, dsn: str, *, schema: str = "public") -> None:
        self.built = (dsn, schema)


class TestStoreChoice:
    """The ``store`` key picks the backend; SQLite stays the default."""

    @pytest.mark.sqlite_only  # the default backend itself
    def test_no_store_key_opens_the_sqlite_file_under_the_data_dir(
            self, tmp_path: pathlib.Path) -> None:
        """[PG-9052] With no ``store``, the server opens ``<data_dir>/orchestrator.db``."""
        store = store_open.open_store(mock_config(data_dir=str(tmp_path)))
        try:
            assert (type(store), (tmp_path / "orchestrator.db").is_file()) == (
                SqliteStore, True)
        finally:
            store.close()

    def test_a_postgresql_dsn_builds_the_pg_store_in_the_configured_schema(
            self, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """[PG-9052] A ``postgresql://`` DSN builds the class of the PostgreSQL module,
        found by its path, with the DSN and ``store_schema``; no SQLite file appears."""
        fake = type(sys)("orchestrator_core.store_pg")
        fake.PgStore = _FakePg  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "orchestrator_core.store_pg", fake)
        cfg = mock_config(data_dir=str(tmp_path), store="postgresql://u@/db?host=/run/pg",
                          store_schema="tenant_a")
        store: Any = store_open.open_store(cfg)
        assert (type(store), store.built, (tmp_path / "orchestrator.db").exists()) == (
            _FakePg, ("postgresql://u@/db?host=/run/pg", "tenant_a"), False)

    def test_the_server_imports_no_postgresql_driver_until_a_dsn_asks(self) -> None:
        """[PG-9052] Importing the app and the store choice loads no psycopg module, so a
        SQLite-only install needs none."""
        code = ("import sys, orchestratord.app, orchestrator_core.store_open; "
                "print(sorted(m for m in sys.modules if m.startswith('psycopg')))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             cwd=ROOT, check=True)
        assert out.stdout == "[]\n"

    @pytest.mark.parametrize(("key", "value"), [
        ("store", "mysql://db"), ("store", "/var/lib/orchestrator.db"),
        ("store_schema", "1abc"), ("store_schema", "a;drop"), ("store_schema", "Abc"),
        ("store_schema", "")])
    def test_a_store_the_server_cannot_use_is_refused_naming_its_key(
            self, tmp_path: pathlib.Path, key: str, value: str) -> None:
        """[PG-9052] A ``store`` that is not a PostgreSQL DSN, or a schema that is not a
        plain identifier, is refused when the config is read, naming the key."""
        path = tmp_path / "c.json"
        path.write_bytes(msgspec.json.encode({"pools": [], key: value}))
        with pytest.raises(InvalidParams) as err:
            load_config(path)
        assert err.value.data == {"field": key}

    def test_serve_takes_the_store_and_its_schema_from_the_command_line(
            self, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """[PG-9052] ``serve --store DSN --store-schema S`` serves with that store."""
        served: list[ServerConfig] = []
        monkeypatch.setattr(cli, "serve", lambda cfg, **_kw: served.append(cfg))
        monkeypatch.setattr(cli, "configure_logging", lambda *a, **k: None)
        assert cli.main(["serve", "--mock", "--data-dir", str(tmp_path), "--store",
                         "postgres://u@db.local/orch", "--store-schema", "s2"]) == 0
        assert [(c.store, c.store_schema) for c in served] == [
            ("postgres://u@db.local/orch", "s2")]

    def test_serve_refuses_a_bad_store_flag_in_one_line(
            self, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
        """[PG-9052] A ``--store`` that is no PostgreSQL DSN exits 2 with one line."""
        with pytest.raises(SystemExit) as exit_:
            cli.main(["serve", "--mock", "--data-dir", str(tmp_path), "--store", "mysql://x"])
        assert (exit_.value.code, capsys.readouterr().err) == (
            2, "orchestratord: config: <command line>: store: store must be empty (SQLite "
               "under data_dir) or a postgresql:// DSN; fix --store\n")


@needs_pg
class TestServeOnPostgres:
    """A real ``orchestratord serve`` process on PostgreSQL."""

    def test_serve_with_store_keeps_the_event_log_in_the_schema_and_no_sqlite_file(
            self, tmp_path: pathlib.Path, cluster: tuple[pathlib.Path, str]) -> None:
        """[PG-9052] ``serve --mock --store DSN --store-schema S`` answers a Step whose
        frames are rows of ``S.events``, and writes no ``orchestrator.db``."""
        import httpx
        import psycopg

        _base, dsn = cluster
        data = tmp_path / "srv"
        data.mkdir()
        proc, url = start_server(mock=True, data_dir=str(data),
                                 extra=["--store", dsn, "--store-schema", "serve_e2e"])
        try:
            with httpx.Client(base_url=url, timeout=30.0) as http:
                resp, frames = http_run_step(http, _new_run(http), llm_step("pg-1"))
        finally:
            stop_server(proc)
        with psycopg.connect(dsn, autocommit=True) as con:
            con.execute("SET search_path TO serve_e2e")
            stored = store_param.counts(con, ("flows", "runs", "steps"))
            con.execute("DROP SCHEMA serve_e2e CASCADE")
        assert (resp.status_code, [f["event"] for f in frames][-1], stored,
                (data / "orchestrator.db").exists()) == (
            201, "end", {"flows": 1, "runs": 1, "steps": 1, "events": len(frames)}, False)


def _new_run(http: Any) -> str:
    flow = http.post("/v1/flows", json={"ast_ir": {"pg": True}}).json()
    return str(http.post(f"/v1/flows/{flow['flow_id']}/runs", json={"seed": 7}).json()[
        "run_id"])


class TestPostgresPass:
    """The suites' second pass: each server a test builds in a schema of its own."""

    def test_a_data_dir_names_one_schema_and_two_dirs_never_share_one(
            self, tmp_path: pathlib.Path) -> None:
        """[PG-9053] The schema follows the data dir's absolute path, so a restarted
        server finds its data and two tests never meet."""
        a, b = tmp_path / "a", tmp_path / "b"
        names = [store_param.schema_for(a), store_param.schema_for(str(a) + "/"),
                 store_param.schema_for(b)]
        assert (names[0] == names[1], names[0] != names[2], len(names[0]),
                names[0][:2]) == (True, True, 26, "t_")

    def test_the_sqlite_pass_leaves_every_config_as_it_is(
            self, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """[PG-9053] With no ``ORCHESTRATORD_TEST_STORE``, configs keep SQLite."""
        monkeypatch.delenv(store_param.TEST_STORE_ENV, raising=False)
        cfg = mock_config(data_dir=str(tmp_path))
        assert store_param.with_test_store(cfg) is cfg

    @needs_pg
    def test_the_postgresql_pass_gives_a_server_its_schema_and_drops_it_after(
            self, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
            cluster: tuple[pathlib.Path, str]) -> None:
        """[PG-9053] On the PostgreSQL pass a config without a store gets the DSN and the
        schema of its data dir, created empty; the schemas made are dropped after."""
        _base, dsn = cluster
        monkeypatch.setenv(store_param.TEST_STORE_ENV, dsn)
        cfg = store_param.with_test_store(mock_config(data_dir=str(tmp_path)))
        schema = store_param.schema_for(tmp_path)
        exists = ("SELECT count(*) FROM information_schema.schemata"  # noqa: S608 - ours
                  f" WHERE schema_name = '{schema}'")
        made = _one(dsn, exists)
        store_param.Schemas.drop({schema})
        assert ((cfg.store, cfg.store_schema), made, _one(dsn, exists)) == (
            (dsn, schema), 1, 0)

    @needs_pg
    def test_table_counts_read_the_schema_of_the_server_on_the_postgresql_pass(
            self, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
            cluster: tuple[pathlib.Path, str]) -> None:
        """[PG-9053] The suites' row counts read the server's schema, frames of packed
        rows counted one by one (STREAM-2011)."""
        import psycopg

        _base, dsn = cluster
        monkeypatch.setenv(store_param.TEST_STORE_ENV, dsn)
        data = tmp_path / "data"
        store_param.with_test_store(mock_config(data_dir=str(data)))
        with psycopg.connect(dsn, autocommit=True) as con:
            con.execute(f"SET search_path TO {store_param.schema_for(data)}")
            for table in ("flows", "runs", "steps"):
                con.execute(f"CREATE TABLE {table} (id TEXT)")
            con.execute("INSERT INTO runs VALUES ('r1'), ('r2')")
            con.execute("CREATE TABLE events (seq BIGINT, last_seq BIGINT)")
            con.execute("INSERT INTO events VALUES (0, NULL), (1, 4)")
        try:
            assert table_counts(data / "orchestrator.db") == {
                "flows": 0, "runs": 2, "steps": 0, "events": 5}
        finally:
            store_param.Schemas.drop({store_param.schema_for(data)})


class TestCi:
    """``.ci/run`` and ``tools/test.sh`` run both passes."""

    def test_ci_starts_a_cluster_runs_the_test_command_and_always_stops_it(self) -> None:
        """[PG-9054] ``.ci/run`` installs the server package only when its binaries are
        missing, stops the cluster in an EXIT trap set before it starts, and hands its
        DSN to the README's test command."""
        lines = (ROOT / ".ci" / "run").read_text().splitlines()
        order = [next(i for i, line in enumerate(lines) if line.startswith(start))
                 for start in ('if ! compgen -G "/usr/lib/postgresql/*/bin/initdb"',
                               "trap 'python3 -m tools.pg_cluster stop",
                               'ORCHESTRATORD_PG_DSN="$(python3 -m tools.pg_cluster start',
                               "bash tools/test.sh")]
        assert (order == sorted(order), lines[-1]) == (True, "bash tools/test.sh")

    def test_the_test_command_runs_unit_and_bdd_again_on_postgresql(self) -> None:
        """[PG-9054] ``tools/test.sh`` ends with the unit and BDD suites run again with
        ``ORCHESTRATORD_TEST_STORE`` set to the cluster's DSN."""
        lines = (ROOT / "tools" / "test.sh").read_text().splitlines()
        assert lines[-4:] == [
            'if [ "$#" -eq 0 ]; then',
            '    set -- -m "not engine" test_harness/unit test_harness/bdd',
            "fi",
            'ORCHESTRATORD_TEST_STORE="$dsn" .venv/bin/python -m pytest -p no:cacheprovider "$@"']


class TestRequiredServer:
    """In CI the PostgreSQL tests cannot pass by skipping (PG-9054)."""

    def test_a_missing_server_skips_here_and_fails_when_required(
            self, monkeypatch: pytest.MonkeyPatch) -> None:
        """[PG-9054] Without server binaries ``require_binaries`` skips; with
        ``ORCHESTRATORD_REQUIRE_PG=1`` (set by ``.ci/run``) it fails instead."""
        from test_harness import pg_support

        monkeypatch.setattr(pg_support, "bin_dir", lambda: None)
        monkeypatch.delenv("ORCHESTRATORD_REQUIRE_PG", raising=False)
        with pytest.raises(pytest.skip.Exception):
            pg_support.require_binaries()
        monkeypatch.setenv("ORCHESTRATORD_REQUIRE_PG", "1")
        with pytest.raises(pytest.fail.Exception, match="ORCHESTRATORD_REQUIRE_PG=1"):
            pg_support.require_binaries()
