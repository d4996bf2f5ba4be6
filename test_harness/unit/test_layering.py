"""Layers point one way; engines and tools are injected (PLACE-5006).

Each check walks the AST of every module of a package (imports under ``TYPE_CHECKING``
and inside functions included) and lists the imports its rule forbids.
"""

from __future__ import annotations

import ast
import pathlib

import anyio
import msgspec
import pytest

from contracts.errors import InvalidParams
from contracts.pools import ReplicaHealth
from orchestrator_core.config import mock_config
from orchestrator_core.pools import PoolManager
from worker_adapters.registry import MockDriver, default_drivers

ROOT = pathlib.Path(__file__).resolve().parents[2]

CONCRETE_ENGINES_AND_TOOLS = (
    "worker_adapters.llamacpp", "worker_adapters.llamacpp_engine",
    "worker_adapters.llamacpp_worker", "worker_adapters.openai_http", "worker_adapters.mock",
    "worker_adapters.registry", "worker_adapters.tools", "worker_adapters.builtin_tools",
    "worker_adapters.remote_tokenizer",
)
PROJECT = ("contracts", "orchestrator_core", "worker_adapters", "orchestratord")


def _imports(tree: ast.AST, module: str) -> list[tuple[int, str]]:
    """Absolute module names imported by ``tree`` (relative imports resolved)."""
    out: list[tuple[int, str]] = []
    package = module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            name = ".".join(p for p in (base, node.module or "") if p)
            out.append((node.lineno, name))
            out += [(node.lineno, f"{name}.{alias.name}") for alias in node.names]
    return out


def violations(package: str, banned: tuple[str, ...], *, root: pathlib.Path = ROOT,
               exempt: tuple[str, ...] = ()) -> list[str]:
    """``path:line imports name`` for every import of a ``banned`` module (or a module
    under it) in ``package``, skipping the ``exempt`` modules."""
    out = []
    for path in sorted((root / package).rglob("*.py")):
        module = ".".join(path.relative_to(root).with_suffix("").parts)
        if module in exempt:
            continue
        for line, name in _imports(ast.parse(path.read_text()), module):
            if any(name == b or name.startswith(b + ".") for b in banned):
                out.append(f"{path.relative_to(root)}:{line} imports {name}")
    return sorted(set(out))


SERVER_HELPERS = ("start_server", "stop_server")
"""What spawns ``orchestratord serve`` and waits for it (``tools/servers.py``)."""


def definitions(package: str, names: tuple[str, ...], *,
                root: pathlib.Path = ROOT) -> list[str]:
    """``path:line defines name`` for every function or class named one of ``names`` in
    ``package``."""
    out = []
    for path in sorted((root / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) \
                    and node.name in names:
                out.append(f"{path.relative_to(root)}:{node.lineno} defines {node.name}")
    return sorted(out)


class TestImportDirection:
    """Each package imports only what its layer may (specs/00_overview.md §3)."""

    def test_the_core_imports_no_concrete_engine_or_tool_and_not_the_service(self) -> None:
        """orchestrator_core reaches engines and tools only through the injected seam."""
        banned = (*CONCRETE_ENGINES_AND_TOOLS, "orchestrator_core.service", "orchestratord")
        assert violations("orchestrator_core", banned,
                          exempt=("orchestrator_core.service",)) == []

    def test_the_adapters_import_nothing_from_the_core_or_the_server(self) -> None:
        """worker_adapters depends on contracts only."""
        assert violations("worker_adapters", ("orchestrator_core", "orchestratord")) == []

    def test_contracts_import_nothing_from_the_project(self) -> None:
        """contracts is the bottom layer."""
        assert violations("contracts", tuple(p for p in PROJECT if p != "contracts")) == []

    def test_no_package_imports_the_tools_or_the_tests(self) -> None:
        """The server's four packages import neither ``tools`` nor ``test_harness``
        [PLACE-5006]."""
        assert [v for package in PROJECT
                for v in violations(package, ("tools", "test_harness"))] == []

    def test_no_package_defines_the_server_spawning_helpers(self) -> None:
        """Starting ``orchestratord serve`` as a process and waiting for it is done by
        ``tools/servers.py``, never by a module of the four packages [PLACE-5006]."""
        assert [d for package in PROJECT for d in definitions(package, SERVER_HELPERS)] == []

    def test_the_helpers_check_reports_a_definition(self, tmp_path: pathlib.Path) -> None:
        """A module defining a server-spawning helper, even nested, is listed."""
        pkg = tmp_path / "orchestratord"
        pkg.mkdir()
        (pkg / "demo.py").write_text(
            "def start_server():\n    pass\n"
            "class Launcher:\n    def stop_server(self):\n        pass\n")
        assert definitions("orchestratord", SERVER_HELPERS, root=tmp_path) == [
            "orchestratord/demo.py:1 defines start_server",
            "orchestratord/demo.py:4 defines stop_server",
        ]

    def test_no_step_module_imports_the_service(self) -> None:
        """A Step type works against its narrow context, never the orchestrator: nothing
        under orchestrator_core/steps imports orchestrator_core.service [PLACE-5010]."""
        assert violations("orchestrator_core/steps", ("orchestrator_core.service",
                                                       "orchestratord")) == []

    def test_the_check_reports_a_violation(self, tmp_path: pathlib.Path) -> None:
        """A module importing a concrete engine, even lazily or for typing, is listed."""
        pkg = tmp_path / "orchestrator_core"
        pkg.mkdir()
        (pkg / "bad.py").write_text(
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from orchestrator_core.service import Orchestrator\n"
            "def f():\n    import worker_adapters.mock\n"
            "from . import service\n")
        assert violations("orchestrator_core", ("orchestrator_core.service",
                                                "worker_adapters.mock"), root=tmp_path) == [
            "orchestrator_core/bad.py:3 imports orchestrator_core.service",
            "orchestrator_core/bad.py:3 imports orchestrator_core.service.Orchestrator",
            "orchestrator_core/bad.py:5 imports worker_adapters.mock",
            "orchestrator_core/bad.py:6 imports orchestrator_core.service",
        ]


MAX_MODULE_LINES = 500
def long_modules(root: pathlib.Path = ROOT, limit: int = MAX_MODULE_LINES) -> list[str]:
    """``path: lines`` of every module of the four packages longer than ``limit`` lines."""
    return [f"{path.relative_to(root)}: {n}"
            for package in PROJECT for path in sorted((root / package).rglob("*.py"))
            if (n := len(path.read_text().splitlines())) > limit]


class TestModuleSize:
    """Modules stay small, one job each (STYLE.md)."""

    def test_no_package_module_is_over_500_lines(self) -> None:
        """Every module of contracts, orchestrator_core, worker_adapters and orchestratord
        has at most 500 lines (but the ones another branch is splitting)."""
        assert long_modules() == []

    def test_the_check_reports_a_long_module(self, tmp_path: pathlib.Path) -> None:
        """A module over the bound is listed with its length."""
        (tmp_path / "contracts").mkdir()
        (tmp_path / "contracts" / "big.py").write_text("x = 1\n" * 501)
        (tmp_path / "contracts" / "small.py").write_text("x = 1\n" * 500)
        assert long_modules(tmp_path) == ["contracts/big.py: 501"]


class TestInjectedDrivers:
    """The pool manager provisions pools through the injected registry only (PLACE-5006)."""

    def test_an_engine_no_driver_serves_is_refused_naming_the_field(
            self, tmp_path: pathlib.Path) -> None:
        """A pool whose engine is not in the registry fails start-up with INVALID_PARAMS."""

        drivers = {k: v for k, v in default_drivers().items() if k != "mock"}
        pm = PoolManager(mock_config(data_dir=str(tmp_path)), tmp_path, drivers)
        with pytest.raises(InvalidParams) as err:
            anyio.run(pm.start)
        assert (str(err.value), err.value.data) == (
            "pool mock-0: no engine driver named 'mock'",
            {"field": "engine", "pool_id": "mock-0", "engines": ["llamacpp", "openai_http"]})

    def test_a_registry_of_its_own_provisions_the_pool(self, tmp_path: pathlib.Path) -> None:
        """A test's own driver under any name serves a pool that names it."""

        cfg = mock_config(data_dir=str(tmp_path), replicas=1)
        cfg = msgspec.structs.replace(cfg, pools=[
            msgspec.structs.replace(cfg.pools[0], engine="scripted")])
        pm = PoolManager(cfg, tmp_path, {"scripted": MockDriver()})

        async def main() -> list[ReplicaHealth]:
            await pm.start()
            try:
                return [r.health for r in pm.all_replicas()]
            finally:
                await pm.stop()

        assert anyio.run(main) == [ReplicaHealth.READY]


_BLOCKED = ("litestar", "granian", "sqlite3", "sqlite_utils", "orchestrator_core",
            "worker_adapters", "jsonschema", "jmespath")
_IMPORT_CLIENT = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {_BLOCKED!r}:
            raise ImportError(f"the client imported {{name}}")
        return None
sys.meta_path.insert(0, Block())
import orchestratord.client
print(sorted(orchestratord.client.__all__))
"""


class TestClientStandsAlone:
    """The Python client needs none of the server's dependencies (PLACE-5006)."""

    def test_client_imports_with_the_server_packages_blocked(self) -> None:
        """Importing ``orchestratord.client`` touches no web framework, server, SQLite,
        core or adapter module: a meta-path hook that refuses them lets it import."""
        import subprocess
        import sys

        done = subprocess.run([sys.executable, "-c", _IMPORT_CLIENT], capture_output=True,
                              text=True, timeout=60, check=False,
                              cwd=pathlib.Path(__file__).resolve().parents[2])
        assert (done.returncode, done.stderr.strip()[-300:]) == (0, "")
        assert "OrchestratorClient" in done.stdout
