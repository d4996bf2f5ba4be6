"""File-system broker: one ``fs_op`` inside a Run's sandbox, or a refusal (POLICY-3001).

Every refusal is ``FsPolicyViolation`` with ``data={"op", "path", "rule"}`` and leaves
the disk as it was. The Run's roots are resolved inside its tenant's own directories
(:mod:`orchestrator_core.sandboxes`, POLICY-3010). Checks, in order, with their rules:

* Path (``nul``, ``encoding``, ``traversal``, ``encoded_traversal``, ``outside_root``,
  ``root``, ``reserved_name``): NUL, non-UTF-8, *any* ``..`` component (``a/..``
  differs from ``.`` when ``a`` is a symlink), ``..`` behind percent-encoding,
  backslashes or NFKC lookalikes (``%2e%2e``, ``\u2024\u2024``), an absolute path
  outside the root, a component named like the broker's temporary files
  (``.fsbroker-*.tmp``). Otherwise ``%`` is literal.
* Allow-list (``allow_list``): ``policy.allow[op]`` holds root-relative globs; ``*``,
  ``?``, ``[..]`` match within one component (``fnmatchcase``), ``**`` any number of
  components, ``.`` the root. An op with no entry, or an empty list, is denied.
* Walk (``symlink``, ``not_found``, ``not_a_directory``, ``race``): each component is
  opened from its parent's descriptor with ``O_NOFOLLOW`` after ``lstat`` (inode
  compared), so no symlink is followed at any depth, inside-pointing ones included, and
  the op acts on the parent's descriptor: a later rename cannot redirect it.
* Type (``not_a_file``, ``special_file``, ``hardlink``, ``not_empty``): only regular
  files and directories; FIFOs, sockets, devices are refused after ``lstat``, never
  opened. Files with several links (maybe aliasing outside) are refused but to delete.
* Quotas (``bytes_quota``, ``files_quota``, ``file_size_quota``, ``read_quota``,
  ``not_utf8``): bytes written and entries (files and directories) created per Run via
  :class:`FsUsage`, the resulting file size, the read size.

Writes go to a temporary file in the same directory, ``fsync``, ``os.replace``, then
``fsync`` of the directory; append rewrites the file so. A failed write removes its
temporary file; ``list`` never shows one. Mutating ops (write, append, delete, mkdir) hold,
from the ``lstat`` of their target to the directory ``fsync``, a process-wide lock keyed
by the target's directory ``(st_dev, st_ino)`` and name, then ``flock`` on that directory,
so Runs sharing a root (and processes sharing a disk) never lose an acknowledged append
(POLICY-3012). Synchronous: run it in a worker thread. Units: bytes, ns (``mtime_ns``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import stat
import threading
import unicodedata
import urllib.parse
from collections.abc import Iterator
from fnmatch import fnmatchcase
from typing import Any, NoReturn

import msgspec

from contracts.errors import FsPolicyViolation, InvalidParams
from contracts.runs import FsPolicy
from contracts.steps import FsOpInput
from orchestrator_core.sandboxes import is_temp_name, resolve_roots, temp_name

__all__ = ["FsBroker", "FsLimits", "FsOpInput", "FsUsage"]

_OPS = frozenset(("read", "write", "append", "list", "stat", "delete", "mkdir"))
_MUTATING = frozenset(("write", "append", "delete", "mkdir"))
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_MODE = 0o644


class FsLimits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Operator limits that a Run's :class:`FsPolicy` may not exceed (bytes, entries).

    Every policy root must resolve strictly inside ``<parent>/<tenant_dir>`` of one of
    ``allowed_parents`` (POLICY-3010); an empty list refuses every root.
    """

    allowed_parents: list[str]
    max_bytes_written: int
    max_files: int
    max_file_bytes: int
    max_read_bytes: int = 1_048_576


class FsUsage(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a Run has used so far: bytes written and entries created (caller persists)."""

    bytes_written: int = 0
    files_created: int = 0


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def _match(parts: list[str], pattern: list[str]) -> bool:
    """Glob match of path components; O(len(parts) * len(pattern)) however many ``**``."""
    # ok[j]: pattern[i:] matches parts[j:], computed for i from the end.
    ok = [j == len(parts) for j in range(len(parts) + 1)]
    for comp in reversed(pattern):
        nxt = [False] * (len(parts) + 1)
        for j in range(len(parts), -1, -1):
            if comp == "**":
                nxt[j] = ok[j] or (j < len(parts) and nxt[j + 1])
            else:
                nxt[j] = j < len(parts) and ok[j + 1] and fnmatchcase(parts[j], comp)
        ok = nxt
    return ok[0]


class _EntryLocks:
    """Process-wide locks keyed by (directory ``st_dev``, ``st_ino``, entry name); an
    entry's lock is dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._mu = threading.Lock()
        self._locks: dict[tuple[int, int, str], tuple[threading.Lock, list[int]]] = {}

    @contextlib.contextmanager
    def hold(self, key: tuple[int, int, str]) -> Iterator[None]:
        with self._mu:
            lock, users = self._locks.setdefault(key, (threading.Lock(), [0]))
            users[0] += 1
        try:
            with lock:
                yield
        finally:
            with self._mu:
                users[0] -= 1
                if not users[0]:
                    del self._locks[key]


_ENTRY_LOCKS = _EntryLocks()


@contextlib.contextmanager
def _exclusive(pfd: int, name: str) -> Iterator[None]:
    """Serialise mutations of ``name`` in the directory ``pfd``: the process-wide entry
    lock, then ``flock`` on the directory (other processes)."""
    st = os.fstat(pfd)
    with _ENTRY_LOCKS.hold((st.st_dev, st.st_ino, name)):
        fcntl.flock(pfd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(pfd, fcntl.LOCK_UN)


def _has_dotdot(path: str) -> bool:
    return ".." in path.replace("\\", "/").split("/")


class FsBroker:
    """Executes single ``fs_op`` operations for one Run (POLICY-3001, POLICY-3010).

    Args:
        policy: the Run's sandbox: roots (relative to the tenant's directory of the first
            allowed parent, or absolute inside one of the tenant's directories),
            allow-list globs per op, quotas.
        limits: the operator's limits; unset policy quotas take these values.
        tenant: the Run's tenant; its roots must lie in its own directories.

    Raises:
        FsPolicyViolation: a root is outside the tenant's directories (``data``:
            ``field``, ``index``, ``rule`` ``outside_tenant``; see
            :func:`~orchestrator_core.sandboxes.resolve_roots`).
        InvalidParams: a root holds NUL or non-UTF-8, an allow-list key is not an op, or
            a quota is negative or above the operator's; ``data["field"]`` names the field.
    """

    def __init__(self, policy: FsPolicy, limits: FsLimits, *, tenant: str) -> None:
        self._roots = resolve_roots(policy.roots, limits.allowed_parents, tenant)
        unknown = sorted(set(policy.allow) - _OPS)
        if unknown:
            raise InvalidParams(f"fs allow-list names unknown ops {unknown}",
                                data={"field": "allow", "value": unknown})
        self._allow = {op: [[c for c in g.split("/") if c not in ("", ".")] for g in globs]
                       for op, globs in policy.allow.items()}
        self.max_bytes_written = self._cap(
            "max_bytes_written", policy.max_bytes_written, limits.max_bytes_written)
        self.max_files = self._cap("max_files", policy.max_files, limits.max_files)
        self.max_file_bytes = self._cap(
            "max_file_bytes", policy.max_file_bytes, limits.max_file_bytes)
        self.max_read_bytes = limits.max_read_bytes

    @property
    def roots(self) -> list[tuple[str, str]]:
        """``(named, real)`` absolute path of each root, in policy order."""
        return list(self._roots)

    @staticmethod
    def _cap(field: str, value: int | None, limit: int) -> int:
        if value is None:
            return limit
        if not 0 <= value <= limit:
            raise InvalidParams(f"fs {field} {value} is outside 0..{limit}",
                                data={"field": field, "value": value, "limit": limit})
        return value

    def execute(self, op: FsOpInput, usage: FsUsage) -> tuple[dict[str, Any], FsUsage]:
        """Run one operation inside the sandbox, or refuse it changing nothing.

        Args:
            op: the operation, its path, its root index and (write/append) its content.
            usage: bytes written and entries created by the Run so far.

        Returns:
            The JSON-able result and the Run's new usage. ``read`` gives ``{content,
            bytes}``; ``write``/``append`` ``{bytes_written, created}``; ``list``
            ``{entries: [{name, type, bytes}]}`` sorted by name (symlinks and special
            files are not listed); ``stat`` ``{type, bytes, mtime_ns}`` (directories
            report 0 bytes); ``delete`` ``{deleted: true}``; ``mkdir`` ``{created}``.

        Raises:
            FsPolicyViolation: any refusal, a missing path included; ``data["rule"]``
                says which check refused.
            InvalidParams: ``content`` is missing for write/append, given for another op,
                or not encodable as UTF-8.
        """
        data: bytes | None = None
        if (op.content is None) == (op.op in ("write", "append")):
            raise InvalidParams("content is required for write/append and only for them",
                                data={"field": "content", "op": op.op})
        if op.content is not None:
            try:
                data = op.content.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvalidParams("content is not valid UTF-8 text",
                                    data={"field": "content"}) from exc
        parts = self._parse(op)
        if not any(_match(parts, g) for g in self._allow.get(op.op, [])):
            self._refuse(op, "allow_list")
        fds: list[int] = []
        try:
            fds.append(os.open(self._roots[op.root][1], _DIR_FLAGS))
            for name in parts[:-1]:
                fds.append(self._open_dir(op, fds[-1], name))
            if parts and op.op in _MUTATING:
                with _exclusive(fds[-1], parts[-1]):
                    return self._act(op, fds[-1], parts[-1], data, usage)
            if parts:
                return self._act(op, fds[-1], parts[-1], data, usage)
            if op.op not in ("list", "stat"):
                self._refuse(op, "root")
            if op.op == "list":
                return self._list(fds[0]), usage
            return {"type": "dir", "bytes": 0, "mtime_ns": os.fstat(fds[0]).st_mtime_ns}, usage
        except FsPolicyViolation:
            raise
        except OSError as exc:
            self._refuse(op, "os_error", exc.strerror or str(exc))
        finally:
            for fd in fds:
                os.close(fd)

    def _refuse(self, op: FsOpInput, rule: str, why: str = "") -> NoReturn:
        msg = f"fs {op.op} of {op.path!r} refused by rule {rule}" + (f": {why}" if why else "")
        raise FsPolicyViolation(msg, data={"op": op.op, "path": op.path, "rule": rule})

    def _parse(self, op: FsOpInput) -> list[str]:
        path = op.path
        if "\x00" in path:
            self._refuse(op, "nul")
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            self._refuse(op, "encoding")
        if _has_dotdot(path):
            self._refuse(op, "traversal")
        decoded = path
        for _ in range(4):  # double and triple encodings, bounded
            decoded = urllib.parse.unquote(decoded, errors="replace")
            folded = unicodedata.normalize("NFKC", decoded)
            if "\x00" in decoded or _has_dotdot(decoded) or _has_dotdot(folded):
                self._refuse(op, "encoded_traversal")
        if not 0 <= op.root < len(self._roots):
            self._refuse(op, "root")
        given, real = self._roots[op.root]
        if os.path.isabs(path):
            norm = os.path.normpath(path)
            base = next((r for r in (given, real) if _inside(norm, r)), None)
            if base is None:
                self._refuse(op, "outside_root")
            path = os.path.relpath(norm, base)
        parts = [c for c in path.split("/") if c not in ("", ".")]
        if any(is_temp_name(c) for c in parts):
            self._refuse(op, "reserved_name")
        return parts

    @staticmethod
    def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def _open_dir(self, op: FsOpInput, dir_fd: int, name: str) -> int:
        st = self._lstat(dir_fd, name)
        if st is None:
            self._refuse(op, "not_found")
        if stat.S_ISLNK(st.st_mode):
            self._refuse(op, "symlink")
        if not stat.S_ISDIR(st.st_mode):
            self._refuse(op, "not_a_directory")
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            os.close(fd)
            self._refuse(op, "race")
        return fd

    def _check_file(self, op: FsOpInput, st: os.stat_result) -> None:
        if stat.S_ISLNK(st.st_mode):
            self._refuse(op, "symlink")
        if stat.S_ISDIR(st.st_mode):
            self._refuse(op, "not_a_file")
        if not stat.S_ISREG(st.st_mode):
            self._refuse(op, "special_file")
        if st.st_nlink > 1 and op.op != "delete":
            self._refuse(op, "hardlink")

    def _act(self, op: FsOpInput, pfd: int, name: str, data: bytes | None,
             usage: FsUsage) -> tuple[dict[str, Any], FsUsage]:
        st = self._lstat(pfd, name)
        if st is not None and stat.S_ISDIR(st.st_mode) and op.op in ("list", "stat", "mkdir"):
            if op.op == "stat":
                return {"type": "dir", "bytes": 0, "mtime_ns": st.st_mtime_ns}, usage
            if op.op == "mkdir":
                return {"created": False}, usage
            fd = self._open_dir(op, pfd, name)
            try:
                return self._list(fd), usage
            finally:
                os.close(fd)
        if op.op == "mkdir":
            if st is not None:
                self._refuse(op, "symlink" if stat.S_ISLNK(st.st_mode) else "not_a_directory")
            if usage.files_created + 1 > self.max_files:
                self._refuse(op, "files_quota")
            os.mkdir(name, 0o755, dir_fd=pfd)
            os.fsync(pfd)
            return {"created": True}, msgspec.structs.replace(
                usage, files_created=usage.files_created + 1)
        if st is None:
            if op.op in ("write", "append"):
                assert data is not None
                return self._write(op, pfd, name, data, None, usage)
            self._refuse(op, "not_found")
        if op.op == "delete" and stat.S_ISDIR(st.st_mode):
            try:
                os.rmdir(name, dir_fd=pfd)
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    self._refuse(op, "not_empty")
                raise
            os.fsync(pfd)
            return {"deleted": True}, usage
        self._check_file(op, st)
        if op.op == "stat":
            return {"type": "file", "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}, usage
        if op.op == "delete":
            os.unlink(name, dir_fd=pfd)
            os.fsync(pfd)
            return {"deleted": True}, usage
        if op.op == "list":
            self._refuse(op, "not_a_directory")
        if op.op == "read":
            raw = self._read(op, pfd, name, st, self.max_read_bytes, "read_quota")
            try:
                return {"content": raw.decode("utf-8"), "bytes": len(raw)}, usage
            except UnicodeDecodeError:
                self._refuse(op, "not_utf8")
        assert data is not None
        if op.op == "append":
            if st.st_size + len(data) > self.max_file_bytes:
                self._refuse(op, "file_size_quota")
            old = self._read(op, pfd, name, st, self.max_file_bytes, "file_size_quota")
            return self._write(op, pfd, name, data, old, usage, st.st_mode)
        return self._write(op, pfd, name, data, b"", usage, st.st_mode)

    def _read(self, op: FsOpInput, pfd: int, name: str, st: os.stat_result, limit: int,
              rule: str) -> bytes:
        if st.st_size > limit:
            self._refuse(op, rule)
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=pfd)
        try:
            now = os.fstat(fd)
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(
                    now.st_mode):
                self._refuse(op, "race")
            chunks, total = [], 0
            while chunk := os.read(fd, min(65536, limit + 1 - total)):
                chunks.append(chunk)
                total += len(chunk)
                if total > limit:
                    self._refuse(op, rule)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def _write(self, op: FsOpInput, pfd: int, name: str, data: bytes, old: bytes | None,
               usage: FsUsage, mode: int = _NEW_FILE_MODE) -> tuple[dict[str, Any], FsUsage]:
        created = old is None
        if usage.bytes_written + len(data) > self.max_bytes_written:
            self._refuse(op, "bytes_quota")
        if len(old or b"") + len(data) > self.max_file_bytes:
            self._refuse(op, "file_size_quota")
        if created and usage.files_created + 1 > self.max_files:
            self._refuse(op, "files_quota")
        tmp = temp_name(secrets.token_hex(8))
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            with open(os.open(tmp, flags, 0o600, dir_fd=pfd), "wb") as fh:
                fh.write((old or b"") + data)
                fh.flush()
                os.fchmod(fh.fileno(), stat.S_IMODE(mode) & 0o777)
                os.fsync(fh.fileno())
            os.replace(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=pfd)
            raise
        os.fsync(pfd)
        return {"bytes_written": len(data), "created": created}, FsUsage(
            bytes_written=usage.bytes_written + len(data),
            files_created=usage.files_created + int(created))

    @staticmethod
    def _list(fd: int) -> dict[str, Any]:
        entries = []
        with os.scandir(fd) as it:
            for e in it:
                if is_temp_name(e.name):  # another op's write in flight
                    continue
                st = e.stat(follow_symlinks=False)
                if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
                    is_dir = stat.S_ISDIR(st.st_mode)
                    entries.append({"name": e.name, "type": "dir" if is_dir else "file",
                                    "bytes": 0 if is_dir else st.st_size})
        return {"entries": sorted(entries, key=lambda x: str(x["name"]))}
