"""Attack corpus for the file-system broker: every case is refused, nothing changes (POLICY-3001).

Each case runs against the same tree: a sandbox root in the ``default`` tenant's directory
of the allowed parent (POLICY-3010), an ``outside`` directory beside it holding a secret,
symlinks that leave the root at depth 1, 2 and 3 and as the final component, a FIFO, a
socket, a hard link and a symlink to ``/dev/zero``. After the refusal, the whole
``tmp_path`` (sandbox *and* outside) must be byte for byte as before: every path, its
mode and its content or link target.
"""

from __future__ import annotations

import os
import pathlib
import socket
import stat
import threading
from typing import Any

import pytest

from contracts.errors import FsPolicyViolation
from contracts.runs import FsPolicy
from orchestrator_core.fsbroker import FsBroker, FsLimits, FsOpInput, FsUsage

OPS = ("read", "write", "append", "list", "stat", "delete", "mkdir")
ALLOW_ALL = {op: ["**"] for op in OPS}
ESCAPE = "/tmp/orchestratord-fsbroker-escape.txt"  # noqa: S108 - the target must stay absent
CONTENT = {"write": "pwned", "append": "pwned"}
#: How each op is aimed *through* a symlinked directory (the link is not the last part).
THROUGH = {"read": "secret.txt", "write": "secret.txt", "append": "secret.txt",
           "list": "od", "stat": "secret.txt", "delete": "secret.txt", "mkdir": "newdir"}
#: Which final-component link each op is aimed at.
FINAL = {"read": "Lf", "write": "Lf", "append": "Lf", "list": "Ldir", "stat": "Lf",
         "delete": "Lf", "mkdir": "Ldir"}


def case(op: str, path: str, rule: str, id: str, *, root: int = 0,
         usage: FsUsage | None = None, **policy: Any) -> Any:
    return pytest.param(op, path, rule, root, usage or FsUsage(), policy, id=id)


CASES = [
    # `..` traversal, plain and hidden.
    case("read", "../outside/secret.txt", "traversal", "dotdot-leading"),
    case("read", "a/../../outside/secret.txt", "traversal", "dotdot-after-descent"),
    case("read", "./../outside/secret.txt", "traversal", "dotdot-after-dot"),
    case("list", "a/b/..", "traversal", "dotdot-trailing"),
    case("write", "a/../note.txt", "traversal", "dotdot-even-when-staying-inside"),
    case("read", "..\\outside\\secret.txt", "traversal", "dotdot-backslash"),
    case("read", "{root}/../outside/secret.txt", "traversal", "dotdot-in-absolute"),
    case("read", "%2e%2e/outside/secret.txt", "encoded_traversal", "pct-dotdot"),
    case("read", "%2E%2E/outside/secret.txt", "encoded_traversal", "pct-dotdot-upper"),
    case("read", "..%2foutside%2fsecret.txt", "encoded_traversal", "pct-slash"),
    case("read", ".%2e/outside/secret.txt", "encoded_traversal", "pct-half"),
    case("read", "%252e%252e/outside/secret.txt", "encoded_traversal", "pct-double"),
    case("write", "a%2f..%2f..%2fescape.txt", "encoded_traversal", "pct-nested"),
    case("read", "note.txt%00.png", "encoded_traversal", "pct-nul"),
    case("read", "\u2024\u2024/outside/secret.txt", "encoded_traversal", "one-dot-leader"),
    case("read", "\uff0e\uff0e/outside/secret.txt", "encoded_traversal", "fullwidth-dots"),
    case("read", "..\uff0foutside\uff0fsecret.txt", "encoded_traversal", "fullwidth-solidus"),
    case("read", "note.txt\x00.png", "nul", "nul-byte"),
    case("write", "a\x00/x", "nul", "nul-byte-write"),
    case("read", "\ud800.txt", "encoding", "lone-surrogate"),
    # Absolute paths and roots.
    case("read", "/etc/passwd", "outside_root", "abs-etc-passwd"),
    case("write", ESCAPE, "outside_root", "abs-tmp-write"),
    case("read", "{tmp}/outside/secret.txt", "outside_root", "abs-sibling-of-root"),
    case("write", "{root}-evil/x.txt", "outside_root", "abs-root-prefix-confusion"),
    case("read", "/dev/zero", "outside_root", "abs-dev-zero"),
    case("read", "note.txt", "root", "root-index-out-of-range", root=1),
    case("read", "note.txt", "root", "root-index-negative", root=-1),
    case("delete", ".", "root", "delete-the-root"),
    case("write", "", "root", "write-the-root"),
    # Special files, links and aliases inside the root.
    case("read", "zero", "symlink", "symlink-to-dev-zero"),
    case("read", "pipe", "special_file", "fifo-read"),
    case("write", "pipe", "special_file", "fifo-write"),
    case("append", "pipe", "special_file", "fifo-append"),
    case("delete", "pipe", "special_file", "fifo-delete"),
    case("read", "sock", "special_file", "socket-read"),
    case("read", "hard.txt", "hardlink", "hardlink-to-outside-read"),
    case("append", "hard.txt", "hardlink", "hardlink-to-outside-append"),
    case("read", "loop", "symlink", "symlink-loop"),
    case("write", "a/b/c/Lnew", "symlink", "dangling-symlink-write"),
    case("mkdir", "a/b/c/Lnew", "symlink", "dangling-symlink-mkdir"),
    case("list", "L1", "symlink", "list-the-link-itself"),
    *[case(op, f"{prefix}/{THROUGH[op]}", "symlink", f"symlink-depth{d}-{op}")
      for d, prefix in ((1, "L1"), (2, "a/L2"), (3, "a/b/L3")) for op in OPS],
    *[case(op, f"a/b/c/{FINAL[op]}", "symlink", f"symlink-final-{op}") for op in OPS],
    # Quotas.
    case("write", "big.txt", "file_size_quota", "write-over-file-size", max_file_bytes=4),
    case("append", "note.txt", "file_size_quota", "append-over-file-size", max_file_bytes=6),
    case("write", "new.txt", "bytes_quota", "write-over-bytes",
         usage=FsUsage(bytes_written=996)),
    case("append", "note.txt", "bytes_quota", "append-over-bytes", max_bytes_written=4),
    case("write", "new.txt", "files_quota", "create-over-files", usage=FsUsage(0, 10)),
    case("mkdir", "newdir", "files_quota", "mkdir-over-files", max_files=0),
    case("read", "big.bin", "read_quota", "read-over-read-limit"),
    # Allow-list.
    case("write", "out/x.sh", "allow_list", "glob-wrong-extension",
         allow={"write": ["out/*.txt"]}),
    case("write", "x.txt", "allow_list", "glob-wrong-directory",
         allow={"write": ["out/*.txt"]}),
    case("write", "out/sub/x.txt", "allow_list", "glob-star-does-not-cross-slash",
         allow={"write": ["out/*.txt"]}),
    case("write", "OUT/x.txt", "allow_list", "glob-case-sensitive",
         allow={"write": ["out/*.txt"]}),
    case("read", "out/x.txt", "allow_list", "op-without-entry",
         allow={"write": ["out/*.txt"]}),
    # Shape of the tree.
    case("delete", "a", "not_empty", "delete-non-empty-dir"),
    case("write", "note.txt/x", "not_a_directory", "write-under-a-file"),
    case("mkdir", "note.txt/d", "not_a_directory", "mkdir-under-a-file"),
    case("write", "a", "not_a_file", "write-over-a-directory"),
]


@pytest.fixture
def tree(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """Builds the shared hostile tree and returns the sandbox root."""
    outside = tmp_path / "outside"
    (outside / "od").mkdir(parents=True)
    (outside / "secret.txt").write_text("top secret\n")
    root = tmp_path / "parent" / "default" / "root"
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "a" / "b" / "c" / "f.txt").write_text("deep\n")
    (root / "out" / "sub").mkdir(parents=True)
    (root / "note.txt").write_text("note\n")
    (root / "big.txt").write_text("")
    (root / "big.bin").write_bytes(b"x" * 65)
    (root / "L1").symlink_to(outside)
    (root / "a" / "L2").symlink_to(outside)
    (root / "a" / "b" / "L3").symlink_to(outside)
    (root / "a" / "b" / "c" / "Lf").symlink_to(outside / "secret.txt")
    (root / "a" / "b" / "c" / "Ldir").symlink_to(outside)
    (root / "a" / "b" / "c" / "Lnew").symlink_to(outside / "created-by-attacker")
    (root / "zero").symlink_to("/dev/zero")
    (root / "loop").symlink_to("loop")
    os.link(outside / "secret.txt", root / "hard.txt")
    os.mkfifo(root / "pipe")
    monkeypatch.chdir(root)  # a relative bind keeps the socket path under 108 bytes
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind("sock")
    monkeypatch.chdir(tmp_path)
    return root


def snapshot(base: pathlib.Path) -> dict[str, tuple[int, bytes | str | None]]:
    """Every path under ``base`` with its mode and its content or link target."""
    out: dict[str, tuple[int, bytes | str | None]] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            body: bytes | str | None = None
            if stat.S_ISLNK(st.st_mode):
                body = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                body = pathlib.Path(path).read_bytes()
            out[os.path.relpath(path, base)] = (st.st_mode, body)
    return out


def guarded(broker: FsBroker, op: FsOpInput, usage: FsUsage) -> BaseException | None:
    """Runs ``execute`` in a daemon thread; a blocked call (e.g. on a FIFO) fails the test."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            broker.execute(op, usage)
            outcome.append(None)
        except BaseException as exc:  # the test inspects whatever was raised
            outcome.append(exc)

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(timeout=5.0)
    assert not worker.is_alive(), "execute blocked"
    return outcome[0]


class TestAttackCorpus:
    """Hostile operations are refused with FS_POLICY_VIOLATION and change nothing."""

    def test_the_corpus_has_at_least_thirty_cases(self) -> None:
        """The corpus stays broad: at least thirty distinct attacks."""
        assert len({p.id for p in CASES}) == len(CASES) >= 30

    @pytest.mark.parametrize(("op", "path", "rule", "root", "usage", "policy"), CASES)
    def test_the_attack_is_refused_and_the_disk_is_unchanged(
            self, tree: pathlib.Path, tmp_path: pathlib.Path, op: str, path: str,
            rule: str, root: int, usage: FsUsage, policy: dict[str, Any]) -> None:
        """The refusal names op, path and rule; no path under tmp_path or /tmp changed."""
        policy = {"allow": ALLOW_ALL} | policy
        broker = FsBroker(FsPolicy(roots=[str(tree)], **policy), FsLimits(
            allowed_parents=[str(tmp_path / "parent")], max_bytes_written=1000,
            max_files=10, max_file_bytes=100, max_read_bytes=64), tenant="default")
        path = path.format(root=tree, tmp=tmp_path)
        before = snapshot(tmp_path)
        error = guarded(broker, FsOpInput(op, path, CONTENT.get(op), root),  # type: ignore[arg-type]
                        usage)
        assert isinstance(error, FsPolicyViolation), error
        assert error.data == {"op": op, "path": path, "rule": rule}
        assert snapshot(tmp_path) == before
        assert not os.path.lexists(ESCAPE)
        assert not os.path.lexists(tmp_path / "outside" / "created-by-attacker")
