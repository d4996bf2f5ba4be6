"""Tenant sandbox directories, shared roots and crash leftovers (POLICY-3010, POLICY-3012).

[POLICY-3010] Each tenant's roots lie in its own directory of each allowed parent; a root
anywhere else is refused with one answer that never depends on the disk.
[POLICY-3012] Mutations of one file are serialised across Runs; temporary files a crash
left are removed at startup and never listed.
"""

from __future__ import annotations

import fcntl
import os
import pathlib
import threading
from typing import Any

import pytest

from contracts.errors import FsPolicyViolation, InvalidParams
from contracts.runs import FsPolicy
from orchestrator_core.fsbroker import FsBroker, FsLimits, FsOpInput, FsUsage
from orchestrator_core.sandboxes import (
    create_roots,
    is_temp_name,
    remove_created,
    resolve_roots,
    sweep_temp_files,
    tenant_dir,
    tenant_dirs,
)


def outside(index: int = 0) -> dict[str, Any]:
    return {"field": "fs_policy.roots", "index": index, "rule": "outside_tenant"}


def refusal(roots: list[str], parents: list[str], tenant: str) -> tuple[str, Any]:
    with pytest.raises(FsPolicyViolation) as info:
        resolve_roots(roots, parents, tenant)
    return info.value.message, info.value.data


class TestTenantDir:
    """A tenant's directory name is file-system safe and no two tenants share one."""

    @pytest.mark.parametrize("tenant", ["default", "alpha", "team_7-b", "x" * 64])
    def test_a_plain_lower_case_name_is_used_as_it_is(self, tenant: str) -> None:
        """1..64 characters of ``[a-z0-9_-]`` name the directory directly."""
        assert tenant_dir(tenant) == tenant

    @pytest.mark.parametrize("tenant", ["Alpha", "a/b", "..", ".", "", "x" * 65, "é",
                                        "a b", "b3-" + "0" * 64])
    def test_any_other_name_becomes_a_67_character_blake3_name(self, tenant: str) -> None:
        """Upper case, separators, dots, empty, long or non-ASCII names are hashed."""
        name = tenant_dir(tenant)
        assert (name[:3], len(name), set(name[3:]) <= set("0123456789abcdef")) == (
            "b3-", 67, True)

    def test_tenant_dirs_are_absolute_and_normalised(
            self, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """One directory per allowed parent, relative parents made absolute."""
        monkeypatch.chdir(tmp_path)
        assert tenant_dirs(["rel/./p", "/a//b/"], "beta") == [f"{tmp_path}/rel/p/beta",
                                                              "/a/b/beta"]

    def test_the_mapping_is_injective_on_lookalikes(self) -> None:
        """Case variants and a tenant named like another's hash get distinct directories."""
        names = ["alpha", "Alpha", "ALPHA", "alpha ", tenant_dir("Alpha")]
        assert len({tenant_dir(n) for n in names}) == len(names)


class TestResolveRoots:
    """Roots are relative to, or absolutely inside, the tenant's own directories."""

    def test_relative_roots_resolve_in_the_first_parent(self, tmp_path: pathlib.Path) -> None:
        """``a/b`` and ``./c//d`` lie under ``<first parent>/<tenant>``."""
        p1, p2 = str(tmp_path / "p1"), str(tmp_path / "p2")
        assert resolve_roots(["a/b", "./c//d"], [p1, p2], "alpha") == [
            (f"{p1}/alpha/a/b",) * 2, (f"{p1}/alpha/c/d",) * 2]

    def test_an_absolute_root_may_use_any_allowed_parent(self, tmp_path: pathlib.Path) -> None:
        """The tenant's directory of the second parent is as good as the first's."""
        p1, p2 = str(tmp_path / "p1"), str(tmp_path / "p2")
        assert resolve_roots([f"{p2}/alpha/r"], [p1, p2], "alpha") == [(f"{p2}/alpha/r",) * 2]

    def test_another_tenants_root_is_refused_whether_it_exists_or_not(
            self, tmp_path: pathlib.Path) -> None:
        """Existing and absent foreign roots, the parent and the tenant directory itself
        get byte-identical messages and data."""
        parent = tmp_path / "sandboxes"
        (parent / "alpha" / "work").mkdir(parents=True)
        (parent / "alpha" / "work" / "secret.txt").write_text("s")
        (parent / "beta" / "own").mkdir(parents=True)
        (parent / "beta" / "link").symlink_to(parent / "alpha" / "work")
        expected = ("fs_policy.roots[0] is not inside this tenant's sandbox directory",
                    outside())
        for root in [f"{parent}/alpha/work", f"{parent}/alpha/absent",
                     f"{parent}/alpha/work/secret.txt", f"{parent}/alpha", str(parent),
                     f"{parent}/beta", f"{parent}/beta/own/../../alpha/work",
                     "../alpha/work", "own/../../alpha/absent", ".", "/etc",
                     f"{parent}/beta/link"]:
            assert (root, refusal([root], [str(parent)], "beta")) == (root, expected)

    def test_the_refusal_names_the_offending_index(self, tmp_path: pathlib.Path) -> None:
        """The second of two roots is named by its index."""
        parent = str(tmp_path / "sandboxes")
        assert refusal(["ok", "/tmp"], [parent], "beta")[1] == outside(1)  # noqa: S108

    def test_no_parent_refuses_every_root(self, tmp_path: pathlib.Path) -> None:
        """With no allowed parent even a relative root is refused."""
        assert refusal(["r"], [], "alpha")[1] == outside()

    def test_a_root_deeper_than_16_directories_is_invalid_params(
            self, tmp_path: pathlib.Path) -> None:
        """16 components below the tenant's directory are fine, 17 are refused."""
        parents = [str(tmp_path)]
        assert len(resolve_roots(["/".join("a" * 16)], parents, "alpha")) == 1
        with pytest.raises(InvalidParams) as info:
            resolve_roots([f"{tmp_path}/alpha/" + "/".join("a" * 17)], parents, "alpha")
        assert info.value.data == {"field": "fs_policy.roots", "index": 0, "limit": 16}

    def test_nul_in_a_root_is_invalid_params(self, tmp_path: pathlib.Path) -> None:
        """A NUL byte is malformed input, not a path question."""
        with pytest.raises(InvalidParams) as info:
            resolve_roots(["a\x00b"], [str(tmp_path)], "alpha")
        assert info.value.data == {"field": "fs_policy.roots", "index": 0}


class TestCreateRoots:
    """Roots are created below the parent component by component, mode 0700."""

    def test_missing_directories_are_created_private(self, tmp_path: pathlib.Path) -> None:
        """The tenant directory and the root get 0700; the creation list is returned."""
        parents = [str(tmp_path / "sb")]
        created = create_roots(resolve_roots(["a/b"], parents, "alpha"), parents, "alpha")
        assert created == [f"{tmp_path}/sb/alpha", f"{tmp_path}/sb/alpha/a",
                           f"{tmp_path}/sb/alpha/a/b"]
        assert {oct(os.stat(p).st_mode & 0o777) for p in created} == {"0o700"}
        assert create_roots(resolve_roots(["a/b"], parents, "alpha"), parents, "alpha") == []

    def test_a_symlink_swapped_in_after_resolution_is_refused(
            self, tmp_path: pathlib.Path) -> None:
        """A component that became a link between check and creation is never followed."""
        parents = [str(tmp_path / "sb")]
        roots = resolve_roots(["a/b"], parents, "alpha")
        (tmp_path / "sb" / "alpha").mkdir(parents=True)
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "sb" / "alpha" / "a").symlink_to(tmp_path / "elsewhere")
        with pytest.raises(FsPolicyViolation) as info:
            create_roots(roots, parents, "alpha")
        assert (info.value.data, os.listdir(tmp_path / "elsewhere")) == (outside(), [])

    def test_remove_created_undoes_only_empty_directories(
            self, tmp_path: pathlib.Path) -> None:
        """A directory that received a file meanwhile stays."""
        parents = [str(tmp_path / "sb")]
        created = create_roots(resolve_roots(["a/b"], parents, "alpha"), parents, "alpha")
        (tmp_path / "sb" / "alpha" / "keep.txt").write_text("k")
        remove_created(created)
        assert sorted(os.listdir(tmp_path / "sb" / "alpha")) == ["keep.txt"]


def broker(parent: pathlib.Path, root: str, tenant: str = "default") -> FsBroker:
    allow = {op: ["**"] for op in ("read", "write", "append", "list", "delete")}
    return FsBroker(FsPolicy(roots=[root], allow=allow), FsLimits(
        allowed_parents=[str(parent)], max_bytes_written=1 << 20, max_files=100,
        max_file_bytes=1 << 20), tenant=tenant)


class TestTempFiles:
    """Names ``.fsbroker-*.tmp`` belong to the broker."""

    @pytest.mark.parametrize(("name", "reserved"), [
        (".fsbroker-0123456789abcdef.tmp", True), (".fsbroker-x.tmp", True),
        (".fsbroker-.tmp", False), ("fsbroker-x.tmp", False), (".fsbroker-x.tmp~", False),
        ("a.tmp", False)])
    def test_the_reserved_pattern(self, name: str, reserved: bool) -> None:
        """Prefix, suffix and at least one character between them."""
        assert is_temp_name(name) is reserved

    def test_list_hides_temporary_files_and_ops_refuse_them(
            self, tmp_path: pathlib.Path) -> None:
        """An in-flight temp file is not listed, and no op may name one."""
        (tmp_path / "default" / "r").mkdir(parents=True)
        (tmp_path / "default" / "r" / ".fsbroker-0123456789abcdef.tmp").write_text("x")
        (tmp_path / "default" / "r" / "a.txt").write_text("a")
        b = broker(tmp_path, "r")
        assert b.execute(FsOpInput("list", "."), FsUsage())[0] == {
            "entries": [{"name": "a.txt", "type": "file", "bytes": 1}]}
        for op, content in (("read", None), ("write", "y"), ("delete", None)):
            with pytest.raises(FsPolicyViolation) as info:
                b.execute(FsOpInput(op, ".fsbroker-x.tmp", content), FsUsage())  # type: ignore[arg-type]
            assert info.value.data == {"op": op, "path": ".fsbroker-x.tmp",
                                       "rule": "reserved_name"}

    def test_the_sweep_removes_leftovers_and_nothing_else(
            self, tmp_path: pathlib.Path) -> None:
        """Only regular files with the reserved name go; links are neither followed nor
        removed; a directory whose flock a live writer holds is skipped."""
        parent = tmp_path / "sb"
        deep = parent / "alpha" / "r" / "d"
        deep.mkdir(parents=True)
        (parent / "beta").mkdir()
        (tmp_path / "outside").mkdir()
        planted = [deep / ".fsbroker-x.tmp", parent / "beta" / ".fsbroker-0a1b.tmp"]
        for p in planted:
            p.write_text("partial")
        kept = [deep / "a.txt", deep / ".fsbroker-.tmp", tmp_path / "outside" / ".fsbroker-o.tmp"]
        for p in kept:
            p.write_text("keep")
        (deep / ".fsbroker-link.tmp").symlink_to(tmp_path / "outside" / ".fsbroker-o.tmp")
        (parent / "alpha" / "out").symlink_to(tmp_path / "outside")
        (parent / "alpha" / "busy").mkdir()
        (parent / "alpha" / "busy" / ".fsbroker-live.tmp").write_text("live")
        fd = os.open(parent / "alpha" / "busy", os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            assert sweep_temp_files([str(parent), str(tmp_path / "missing")]) == 2
        finally:
            os.close(fd)
        assert [p.exists() for p in planted] == [False, False]
        assert [p.exists() for p in kept] == [True, True, True]
        assert sorted(os.listdir(deep)) == [".fsbroker-.tmp", ".fsbroker-link.tmp", "a.txt"]
        assert os.listdir(parent / "alpha" / "busy") == [".fsbroker-live.tmp"]


class TestSharedRoot:
    """Two Runs' brokers on one root never lose an acknowledged append."""

    def test_concurrent_appends_from_two_brokers_all_land_exactly_once(
            self, tmp_path: pathlib.Path) -> None:
        """2 x 30 threads append distinct lines to one file: each is there once."""
        (tmp_path / "default" / "shared").mkdir(parents=True)
        brokers = [broker(tmp_path, "shared"), broker(tmp_path, "shared")]
        barrier = threading.Barrier(60)
        errors: list[BaseException] = []

        def append(b: FsBroker, line: str) -> None:
            barrier.wait()
            try:
                b.execute(FsOpInput("append", "log.txt", line + "\n"), FsUsage())
            except BaseException as exc:  # collected for the assertion below
                errors.append(exc)

        lines = [f"run{r}-{i}" for r in range(2) for i in range(30)]
        threads = [threading.Thread(target=append, args=(brokers[int(line[3])], line))
                   for line in lines]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        written = (tmp_path / "default" / "shared" / "log.txt").read_text().splitlines()
        assert (errors, sorted(written)) == ([], sorted(lines))
        assert os.listdir(tmp_path / "default" / "shared") == ["log.txt"]
