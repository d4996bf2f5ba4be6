"""File-system broker: each op, atomic writes, quotas, allow-list, operator limits (POLICY-3001)."""

from __future__ import annotations

import os
import pathlib
import stat
from typing import Any

import msgspec
import pytest

from contracts.errors import FsPolicyViolation, InvalidParams
from contracts.runs import FsPolicy
from orchestrator_core.fsbroker import FsBroker, FsLimits, FsOpInput, FsUsage

OPS = ("read", "write", "append", "list", "stat", "delete", "mkdir")
ALLOW_ALL = {op: ["**"] for op in OPS}


OUTSIDE = {"field": "fs_policy.roots", "index": 0, "rule": "outside_tenant"}


@pytest.fixture
def root(tmp_path: pathlib.Path) -> pathlib.Path:
    """The Run's sandbox root, inside the ``default`` tenant's directory of the operator's
    allowed parent."""
    path = tmp_path / "sandboxes" / "default" / "run-1"
    path.mkdir(parents=True)
    return path


def limits(tmp_path: pathlib.Path, **kw: Any) -> FsLimits:
    base: dict[str, Any] = {"allowed_parents": [str(tmp_path / "sandboxes")],
                            "max_bytes_written": 1000, "max_files": 10,
                            "max_file_bytes": 100, "max_read_bytes": 64}
    return FsLimits(**(base | kw))


def broker(root: pathlib.Path, allow: dict[str, list[str]] | None = None,
           **quotas: Any) -> FsBroker:
    policy = FsPolicy(roots=[str(root)], allow=ALLOW_ALL if allow is None else allow,
                      **quotas)
    return FsBroker(policy, limits(root.parent.parent.parent), tenant="default")


def run(b: FsBroker, op: str, path: str, content: str | None = None,
        usage: FsUsage | None = None) -> tuple[dict[str, Any], FsUsage]:
    return b.execute(FsOpInput(op, path, content), usage or FsUsage())  # type: ignore[arg-type]


def refused(b: FsBroker, op: str, path: str, content: str | None = None,
            usage: FsUsage | None = None) -> dict[str, Any] | None:
    with pytest.raises(FsPolicyViolation) as info:
        run(b, op, path, content, usage)
    return info.value.data


class TestConstruction:
    """The constructor refuses a policy that exceeds the operator's limits."""

    def test_a_root_outside_the_allowed_parents_is_an_fs_policy_violation(
            self, tmp_path: pathlib.Path) -> None:
        """A root beside, not beneath, the allowed parent is refused naming its index."""
        with pytest.raises(FsPolicyViolation) as info:
            FsBroker(FsPolicy(roots=[str(tmp_path / "elsewhere")]), limits(tmp_path),
                     tenant="default")
        assert info.value.data == OUTSIDE

    @pytest.mark.parametrize("below", ["", "default"])
    def test_the_allowed_parent_and_the_tenant_directory_are_not_roots(
            self, tmp_path: pathlib.Path, below: str) -> None:
        """A Run may take neither the parent nor its whole tenant directory."""
        with pytest.raises(FsPolicyViolation) as info:
            FsBroker(FsPolicy(roots=[str(tmp_path / "sandboxes" / below)]),
                     limits(tmp_path), tenant="default")
        assert info.value.data == OUTSIDE

    def test_a_relative_root_resolves_in_the_tenant_directory(
            self, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A relative root lies in ``<first parent>/<tenant>``, never in the cwd."""
        monkeypatch.chdir(tmp_path)
        b = FsBroker(FsPolicy(roots=["a/./b"]), limits(tmp_path), tenant="alpha")
        assert b.roots == [(str(tmp_path / "sandboxes" / "alpha" / "a" / "b"),) * 2]

    def test_a_symlinked_root_resolving_outside_the_parents_is_refused(
            self, tmp_path: pathlib.Path) -> None:
        """The root is compared after ``realpath``, so a link cannot smuggle it out."""
        (tmp_path / "sandboxes" / "default").mkdir(parents=True)
        (tmp_path / "sandboxes" / "default" / "r").symlink_to(tmp_path)
        with pytest.raises(FsPolicyViolation) as info:
            FsBroker(FsPolicy(roots=[str(tmp_path / "sandboxes" / "default" / "r")]),
                     limits(tmp_path), tenant="default")
        assert info.value.data == OUTSIDE

    def test_no_allowed_parents_refuses_every_root(self, root: pathlib.Path) -> None:
        """An empty ``allowed_parents`` list admits no root at all."""
        with pytest.raises(FsPolicyViolation) as info:
            FsBroker(FsPolicy(roots=[str(root)]),
                     limits(root.parent.parent.parent, allowed_parents=[]), tenant="default")
        assert info.value.data == OUTSIDE

    @pytest.mark.parametrize(("field", "value", "limit"), [
        ("max_bytes_written", 1001, 1000), ("max_files", 11, 10),
        ("max_file_bytes", 101, 100), ("max_files", -1, 10)])
    def test_a_quota_above_the_operator_limit_names_the_field(
            self, root: pathlib.Path, field: str, value: int, limit: int) -> None:
        """A policy quota must lie in ``0..limit``; the error names field, value and limit."""
        quotas: dict[str, Any] = {field: value}
        with pytest.raises(InvalidParams) as info:
            broker(root, **quotas)
        assert info.value.data == {"field": field, "value": value, "limit": limit}

    def test_an_unknown_op_in_the_allow_list_is_invalid_params(
            self, root: pathlib.Path) -> None:
        """Allow-list keys are op names; a typo is an error, not a silent denial."""
        with pytest.raises(InvalidParams) as info:
            broker(root, allow={"wirte": ["**"]})
        assert info.value.data == {"field": "allow", "value": ["wirte"]}

    def test_unset_policy_quotas_take_the_operator_limits(self, root: pathlib.Path) -> None:
        """A policy without quotas gets the operator's; a lower policy quota wins."""
        b = broker(root, max_files=3)
        assert (b.max_bytes_written, b.max_files, b.max_file_bytes, b.max_read_bytes) == (
            1000, 3, 100, 64)


class TestRead:
    """``read`` returns UTF-8 text and its size in bytes."""

    def test_read_returns_content_and_utf8_byte_count(self, root: pathlib.Path) -> None:
        """Two characters, three bytes: ``bytes`` counts the encoded size."""
        (root / "n.txt").write_text("hé", encoding="utf-8")
        assert run(broker(root), "read", "n.txt") == ({"content": "hé", "bytes": 3},
                                                      FsUsage())

    def test_an_absolute_path_inside_the_root_is_accepted(self, root: pathlib.Path) -> None:
        """An absolute path under the root is read as its root-relative path."""
        (root / "n.txt").write_text("x")
        assert run(broker(root), "read", str(root / "n.txt"))[0] == {"content": "x",
                                                                     "bytes": 1}

    def test_non_utf8_content_is_refused(self, root: pathlib.Path) -> None:
        """Bytes that do not decode as UTF-8 are ``not_utf8``."""
        (root / "b.bin").write_bytes(b"\xff\xfe")
        assert refused(broker(root), "read", "b.bin") == {"op": "read", "path": "b.bin",
                                                          "rule": "not_utf8"}

    def test_a_file_over_max_read_bytes_is_refused(self, root: pathlib.Path) -> None:
        """65 bytes against a 64-byte read limit is ``read_quota``."""
        (root / "big.txt").write_text("x" * 65)
        assert refused(broker(root), "read", "big.txt") == {"op": "read", "path": "big.txt",
                                                            "rule": "read_quota"}

    def test_a_missing_file_is_refused_as_not_found(self, root: pathlib.Path) -> None:
        """Every broker refusal is FS_POLICY_VIOLATION; the rule says ``not_found``."""
        assert refused(broker(root), "read", "nope.txt") == {
            "op": "read", "path": "nope.txt", "rule": "not_found"}

    def test_a_symlink_pointing_inside_the_root_is_still_refused(
            self, root: pathlib.Path) -> None:
        """No symlink is ever followed, even one whose target stays in the sandbox."""
        (root / "n.txt").write_text("x")
        (root / "link").symlink_to(root / "n.txt")
        assert refused(broker(root), "read", "link") == {"op": "read", "path": "link",
                                                         "rule": "symlink"}


class TestWrite:
    """``write`` replaces the whole file atomically and reports whether it created it."""

    def test_write_creates_a_file_and_counts_bytes_and_files(
            self, root: pathlib.Path) -> None:
        """A new file adds its bytes and one file to the usage."""
        result = run(broker(root), "write", "out.txt", "héllo", FsUsage(3, 1))
        assert result == ({"bytes_written": 6, "created": True}, FsUsage(9, 2))
        assert (root / "out.txt").read_text(encoding="utf-8") == "héllo"
        assert stat.S_IMODE((root / "out.txt").stat().st_mode) == 0o644

    def test_write_replaces_the_whole_file_and_keeps_its_mode(
            self, root: pathlib.Path) -> None:
        """Shorter content leaves no tail of the old one; the permission bits survive."""
        (root / "f.txt").write_text("a long old content")
        (root / "f.txt").chmod(0o640)
        result = run(broker(root), "write", "f.txt", "new")
        assert result == ({"bytes_written": 3, "created": False}, FsUsage(3, 0))
        assert (root / "f.txt").read_text() == "new"
        assert stat.S_IMODE((root / "f.txt").stat().st_mode) == 0o640

    def test_no_temporary_file_is_left_behind(self, root: pathlib.Path) -> None:
        """After writes and appends the directory holds only the target files."""
        b = broker(root)
        (root / "d").mkdir()
        run(b, "write", "d/a.txt", "1")
        run(b, "append", "d/a.txt", "2")
        run(b, "write", "d/b.txt", "3")
        assert sorted(os.listdir(root / "d")) == ["a.txt", "b.txt"]

    def test_a_failed_replace_removes_the_temp_file_and_keeps_the_old_content(
            self, root: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """An OS error at ``os.replace`` is ``os_error`` and leaves the directory as it was."""
        (root / "f.txt").write_text("old")

        def boom(*_a: Any, **_k: Any) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr("orchestrator_core.fsbroker.os.replace", boom)
        assert refused(broker(root), "write", "f.txt", "new") == {
            "op": "write", "path": "f.txt", "rule": "os_error"}
        monkeypatch.undo()
        assert os.listdir(root) == ["f.txt"]
        assert (root / "f.txt").read_text() == "old"

    def test_content_is_required_for_write(self, root: pathlib.Path) -> None:
        """A write without content is malformed input, not a policy question."""
        with pytest.raises(InvalidParams) as info:
            run(broker(root), "write", "f.txt")
        assert info.value.data == {"field": "content", "op": "write"}

    def test_content_is_rejected_for_read(self, root: pathlib.Path) -> None:
        """Content on an op that takes none is malformed input."""
        with pytest.raises(InvalidParams) as info:
            run(broker(root), "read", "f.txt", "x")
        assert info.value.data == {"field": "content", "op": "read"}

    def test_the_op_input_is_strict_on_the_wire(self) -> None:
        """Unknown fields and unknown ops do not decode."""
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.decode(b'{"op":"read","path":"x","mode":1}', type=FsOpInput)
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.decode(b'{"op":"chmod","path":"x"}', type=FsOpInput)


class TestAppend:
    """``append`` adds to a file by rewriting it atomically."""

    def test_append_adds_to_an_existing_file(self, root: pathlib.Path) -> None:
        """Only the appended bytes count as written; the file is not new."""
        (root / "log.txt").write_text("ab")
        assert run(broker(root), "append", "log.txt", "cd") == (
            {"bytes_written": 2, "created": False}, FsUsage(2, 0))
        assert (root / "log.txt").read_text() == "abcd"

    def test_append_creates_a_missing_file(self, root: pathlib.Path) -> None:
        """Appending to nothing creates the file and counts it."""
        assert run(broker(root), "append", "log.txt", "x") == (
            {"bytes_written": 1, "created": True}, FsUsage(1, 1))

    def test_the_resulting_size_is_bounded_by_max_file_bytes(
            self, root: pathlib.Path) -> None:
        """95 existing bytes plus 6 exceed a 100-byte file and change nothing."""
        (root / "log.txt").write_text("x" * 95)
        assert refused(broker(root), "append", "log.txt", "y" * 6) == {
            "op": "append", "path": "log.txt", "rule": "file_size_quota"}
        assert (root / "log.txt").read_text() == "x" * 95


class TestList:
    """``list`` names regular files and directories, sorted, with sizes."""

    def test_list_is_sorted_with_types_and_sizes(self, root: pathlib.Path) -> None:
        """Directories report 0 bytes; symlinks and FIFOs are not listed."""
        (root / "b.txt").write_text("xyz")
        (root / "a").mkdir()
        (root / "c.txt").write_text("")
        (root / "link").symlink_to(root / "b.txt")
        os.mkfifo(root / "pipe")
        assert run(broker(root), "list", "") == ({"entries": [
            {"name": "a", "type": "dir", "bytes": 0},
            {"name": "b.txt", "type": "file", "bytes": 3},
            {"name": "c.txt", "type": "file", "bytes": 0}]}, FsUsage())

    def test_list_of_a_subdirectory(self, root: pathlib.Path) -> None:
        """A nested directory is listed by its relative path."""
        (root / "a" / "b").mkdir(parents=True)
        (root / "a" / "b" / "f").write_text("1")
        assert run(broker(root), "list", "./a//b/")[0] == {
            "entries": [{"name": "f", "type": "file", "bytes": 1}]}

    def test_list_of_a_file_is_refused(self, root: pathlib.Path) -> None:
        """Listing a regular file is ``not_a_directory``."""
        (root / "f").write_text("1")
        assert refused(broker(root), "list", "f") == {"op": "list", "path": "f",
                                                      "rule": "not_a_directory"}


class TestStat:
    """``stat`` reports type, size and modification time."""

    def test_stat_of_a_file(self, root: pathlib.Path) -> None:
        """A file reports its size and ``mtime_ns``."""
        (root / "f").write_text("12345")
        os.utime(root / "f", ns=(1_000_000_000, 2_000_000_000))
        assert run(broker(root), "stat", "f")[0] == {"type": "file", "bytes": 5,
                                                     "mtime_ns": 2_000_000_000}

    def test_stat_of_a_directory_and_of_the_root(self, root: pathlib.Path) -> None:
        """Directories, the root included, report type ``dir`` and 0 bytes."""
        (root / "d").mkdir()
        os.utime(root / "d", ns=(1, 3_000_000_000))
        b = broker(root)
        assert run(b, "stat", "d")[0] == {"type": "dir", "bytes": 0,
                                          "mtime_ns": 3_000_000_000}
        assert run(b, "stat", ".")[0]["type"] == "dir"


class TestDelete:
    """``delete`` removes a file or an empty directory."""

    def test_delete_a_file_and_an_empty_directory(self, root: pathlib.Path) -> None:
        """Both disappear; usage is unchanged."""
        (root / "f").write_text("1")
        (root / "d").mkdir()
        b = broker(root)
        assert run(b, "delete", "f") == ({"deleted": True}, FsUsage())
        assert run(b, "delete", "d") == ({"deleted": True}, FsUsage())
        assert os.listdir(root) == []

    def test_delete_of_a_non_empty_directory_is_refused(self, root: pathlib.Path) -> None:
        """A directory with entries is ``not_empty`` and stays."""
        (root / "d").mkdir()
        (root / "d" / "f").write_text("1")
        assert refused(broker(root), "delete", "d") == {"op": "delete", "path": "d",
                                                        "rule": "not_empty"}
        assert os.listdir(root / "d") == ["f"]

    def test_the_root_itself_cannot_be_deleted(self, root: pathlib.Path) -> None:
        """Write-like ops on the root are ``root``."""
        assert refused(broker(root), "delete", ".") == {"op": "delete", "path": ".",
                                                        "rule": "root"}


class TestMkdir:
    """``mkdir`` creates one directory; its parent must exist."""

    def test_mkdir_creates_once_and_counts_one_entry(self, root: pathlib.Path) -> None:
        """A second mkdir of the same path is ``created: false`` and costs nothing."""
        b = broker(root)
        result, usage = run(b, "mkdir", "d")
        assert (result, usage) == ({"created": True}, FsUsage(0, 1))
        assert run(b, "mkdir", "d", usage=usage) == ({"created": False}, FsUsage(0, 1))
        assert (root / "d").is_dir()

    def test_mkdir_does_not_create_parents(self, root: pathlib.Path) -> None:
        """A missing parent is ``not_found``."""
        assert refused(broker(root), "mkdir", "a/b") == {"op": "mkdir", "path": "a/b",
                                                         "rule": "not_found"}

    def test_mkdir_over_an_existing_file_is_refused(self, root: pathlib.Path) -> None:
        """A file in the way is ``not_a_directory``."""
        (root / "f").write_text("1")
        assert refused(broker(root), "mkdir", "f") == {"op": "mkdir", "path": "f",
                                                       "rule": "not_a_directory"}


class TestQuotas:
    """Bytes written, entries created and file size are capped per Run."""

    def test_bytes_written_accumulate_until_the_quota(self, root: pathlib.Path) -> None:
        """Three 4-byte writes fit in 10 bytes only twice."""
        b = broker(root, max_bytes_written=10)
        usage = FsUsage()
        for name in ("a", "b"):
            usage = run(b, "write", name, "1234", usage=usage)[1]
        assert usage == FsUsage(8, 2)
        assert refused(b, "write", "c", "1234", usage) == {"op": "write", "path": "c",
                                                           "rule": "bytes_quota"}
        assert sorted(os.listdir(root)) == ["a", "b"]

    def test_files_created_accumulate_until_the_quota(self, root: pathlib.Path) -> None:
        """With two entries allowed, a file and a directory use them up."""
        b = broker(root, max_files=2)
        usage = run(b, "write", "a", "1")[1]
        usage = run(b, "mkdir", "d", usage=usage)[1]
        assert usage == FsUsage(1, 2)
        assert refused(b, "write", "b", "1", usage)["rule"] == "files_quota"  # type: ignore[index]
        assert refused(b, "mkdir", "e", usage=usage)["rule"] == "files_quota"  # type: ignore[index]
        assert run(b, "write", "a", "2", usage) == ({"bytes_written": 1, "created": False},
                                                    FsUsage(2, 2))

    def test_a_write_larger_than_the_file_size_quota_is_refused(
            self, root: pathlib.Path) -> None:
        """The policy's 5-byte file limit refuses 6 bytes and accepts 5."""
        b = broker(root, max_file_bytes=5)
        assert refused(b, "write", "f", "123456") == {"op": "write", "path": "f",
                                                      "rule": "file_size_quota"}
        assert run(b, "write", "f", "12345")[0] == {"bytes_written": 5, "created": True}


class TestAllowList:
    """``policy.allow`` maps each op to root-relative globs; no entry means denied."""

    def test_an_op_without_an_entry_is_denied(self, root: pathlib.Path) -> None:
        """Allowing only ``read`` denies ``stat`` of the same file."""
        (root / "f").write_text("1")
        b = broker(root, allow={"read": ["*"]})
        assert run(b, "read", "f")[0] == {"content": "1", "bytes": 1}
        assert refused(b, "stat", "f") == {"op": "stat", "path": "f", "rule": "allow_list"}

    def test_an_empty_list_is_denied(self, root: pathlib.Path) -> None:
        """An op mapped to no globs is as denied as a missing one."""
        assert refused(broker(root, allow={"list": []}), "list", ".")["rule"] == (  # type: ignore[index]
            "allow_list")

    def test_a_star_matches_inside_one_component_only(self, root: pathlib.Path) -> None:
        """``out/*.txt`` admits ``out/a.txt`` but not ``out/sub/a.txt``."""
        (root / "out" / "sub").mkdir(parents=True)
        b = broker(root, allow={"write": ["out/*.txt"]})
        assert run(b, "write", "out/a.txt", "1")[0]["created"] is True
        assert refused(b, "write", "out/sub/a.txt", "1")["rule"] == "allow_list"  # type: ignore[index]

    def test_double_star_matches_any_depth_and_dot_is_the_root(
            self, root: pathlib.Path) -> None:
        """``out/**`` admits nested paths; ``.`` admits listing the root only."""
        (root / "out" / "a" / "b").mkdir(parents=True)
        b = broker(root, allow={"write": ["out/**"], "list": ["."]})
        assert run(b, "write", "out/a/b/c.txt", "1")[0]["created"] is True
        assert run(b, "list", "")[0] == {"entries": [{"name": "out", "type": "dir",
                                                      "bytes": 0}]}
        assert refused(b, "list", "out")["rule"] == "allow_list"  # type: ignore[index]

    def test_the_match_is_case_sensitive(self, root: pathlib.Path) -> None:
        """``*.txt`` does not admit ``X.TXT``."""
        assert refused(broker(root, allow={"write": ["*.txt"]}), "write", "X.TXT",
                       "1")["rule"] == "allow_list"  # type: ignore[index]
