"""Tenant sandbox directories: naming, root resolution, creation, crash cleanup (POLICY-3010).

Every tenant owns one directory in each operator allowed parent,
``<parent>/<tenant_dir(tenant)>``, and a Run's ``fs_policy.roots`` must lie strictly inside
one of the caller's own. A root is written either relative (resolved inside the tenant's
directory of the *first* allowed parent) or absolute. A root anywhere else — another
tenant's directory, whether it exists or not, the parent itself, the tenant directory
itself, any path with a ``..`` component — is refused with ``FS_POLICY_VIOLATION`` whose
message and data depend only on the root's index, never on the disk: the lexical check
comes first, and symlinks are resolved only for paths inside the caller's own directory.

The broker's temporary files are named ``.fsbroker-<16 hex>.tmp``. Every name of the form
``.fsbroker-*.tmp`` is reserved: the broker refuses it as a path component, ``list`` hides
it, and :func:`sweep_temp_files` removes the ones a crash left behind (POLICY-3012).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import string

import blake3

from contracts.errors import FsPolicyViolation, InvalidParams

__all__ = [
    "MAX_ROOT_DEPTH",
    "ResolvedRoot",
    "create_roots",
    "is_temp_name",
    "remove_created",
    "resolve_roots",
    "sweep_temp_files",
    "temp_name",
    "tenant_dir",
    "tenant_dirs",
]

_PLAIN = frozenset(string.ascii_lowercase + string.digits + "_-")
_TEMP_PREFIX, _TEMP_SUFFIX = ".fsbroker-", ".tmp"
MAX_ROOT_DEPTH = 16
"""Most path components a root may have below the tenant's directory (bounds the
directories one Run creation makes, on the event loop: 16 roots x 16)."""
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

ResolvedRoot = tuple[str, str]
"""``(absolute path as named, real path)`` of one sandbox root."""


def tenant_dir(tenant: str) -> str:
    """The directory name of a tenant inside each allowed parent (POLICY-3010).

    A name of 1..64 characters from ``[a-z0-9_-]`` is used as it is; any other name
    (upper case included, so that case-insensitive file systems cannot fold two tenants
    together) becomes ``b3-`` + the 64 hex digits of blake3 of its UTF-8 bytes: 67
    characters, longer than any plain name, so the mapping is injective.

    Args:
        tenant: the tenant name (operator config ``auth_tokens`` values; ``default``).

    Returns:
        A single, file-system-safe path component.
    """
    if 1 <= len(tenant) <= 64 and all(c in _PLAIN for c in tenant):
        return tenant
    return "b3-" + blake3.blake3(tenant.encode("utf-8", "surrogatepass")).hexdigest()


def tenant_dirs(parents: list[str], tenant: str) -> list[str]:
    """The tenant's own directory in each allowed parent, absolute and normalised (what
    ``GET /v1/capabilities`` shows as ``sandbox_parents``, POLICY-3010)."""
    return [lexical for lexical, _real in _bases(parents, tenant)]


def temp_name(token: str) -> str:
    """The broker's temporary file name for a random ``token`` (16 hex digits)."""
    return f"{_TEMP_PREFIX}{token}{_TEMP_SUFFIX}"


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is reserved for the broker's temporary files: ``.fsbroker-*.tmp``
    with at least one character in between (plain string tests, no regular expression)."""
    return (len(name) > len(_TEMP_PREFIX) + len(_TEMP_SUFFIX)
            and name.startswith(_TEMP_PREFIX) and name.endswith(_TEMP_SUFFIX))


def _inside(path: str, base: str) -> bool:
    """``path`` lies strictly beneath ``base`` (both normalised absolute paths)."""
    return path != base and os.path.commonpath([path, base]) == base


def _refuse(index: int) -> FsPolicyViolation:
    return FsPolicyViolation(
        f"fs_policy.roots[{index}] is not inside this tenant's sandbox directory",
        data={"field": "fs_policy.roots", "index": index, "rule": "outside_tenant"})


def _bases(parents: list[str], tenant: str) -> list[tuple[str, str]]:
    """``(lexical, real)`` tenant directory of each allowed parent."""
    name = tenant_dir(tenant)
    out = []
    for parent in parents:
        lexical = os.path.join(os.path.normpath(os.path.abspath(parent)), name)
        out.append((lexical, os.path.join(os.path.realpath(parent), name)))
    return out


def resolve_roots(roots: list[str], parents: list[str], tenant: str) -> list[ResolvedRoot]:
    """Resolve a Run's roots inside the tenant's own directories (POLICY-3010).

    Args:
        roots: ``fs_policy.roots`` as the client wrote them.
        parents: the operator's allowed parents (absolute or relative to the cwd).
        tenant: the Run's tenant.

    Returns:
        ``(named, real)`` absolute paths per root, in order.

    Raises:
        InvalidParams: a root holds a NUL byte, is not valid UTF-8, or lies more than
            :data:`MAX_ROOT_DEPTH` components below the tenant's directory (``field``).
        FsPolicyViolation: a root is not strictly inside ``<parent>/<tenant_dir>`` of any
            allowed parent, or resolves (through a symlink) outside it; ``data`` is
            ``{"field": "fs_policy.roots", "index": i, "rule": "outside_tenant"}`` in
            every case, so the answer never depends on what exists on disk.
    """
    bases = _bases(parents, tenant)
    out: list[ResolvedRoot] = []
    for i, root in enumerate(roots):
        try:
            root.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidParams(f"fs_policy.roots[{i}] is not valid UTF-8",
                                data={"field": "fs_policy.roots", "index": i}) from None
        if "\x00" in root:
            raise InvalidParams(f"fs_policy.roots[{i}] holds a NUL byte",
                                data={"field": "fs_policy.roots", "index": i})
        if not bases or ".." in root.split("/"):
            raise _refuse(i)
        if os.path.isabs(root):
            named = os.path.normpath(root)
            base = next(((lex, real) for lex, real in bases
                         if _inside(named, lex) or _inside(named, real)), None)
        else:
            base = bases[0]
            named = os.path.normpath(os.path.join(base[0], root))
        if base is None or not (_inside(named, base[0]) or _inside(named, base[1])):
            raise _refuse(i)
        below = base[0] if _inside(named, base[0]) else base[1]
        if len(os.path.relpath(named, below).split(os.sep)) > MAX_ROOT_DEPTH:
            raise InvalidParams(f"fs_policy.roots[{i}] is more than {MAX_ROOT_DEPTH} "
                                "directories deep", data={"field": "fs_policy.roots",
                                                          "index": i,
                                                          "limit": MAX_ROOT_DEPTH})
        # Only now, inside the caller's own directory, may symlinks be resolved.
        real = os.path.realpath(named)
        if not _inside(real, os.path.realpath(base[1])):
            raise _refuse(i)
        out.append((named, real))
    return out


def create_roots(roots: list[ResolvedRoot], parents: list[str], tenant: str) -> list[str]:
    """Create the missing directories of each root (mode 0700), never following a link.

    Each component below the allowed parent (the tenant directory first) is created or
    opened from its parent's descriptor with ``O_NOFOLLOW``.

    Args:
        roots: from :func:`resolve_roots` with the same ``parents`` and ``tenant``.
        parents: the operator's allowed parents.
        tenant: the Run's tenant.

    Returns:
        The directories this call created, deepest last (for :func:`remove_created`).

    Raises:
        InvalidParams: a directory cannot be created (``field`` ``fs_policy.roots``).
        FsPolicyViolation: a component is a symlink or not a directory
            (``outside_tenant``, as in :func:`resolve_roots`).
    """
    created: list[str] = []
    name = tenant_dir(tenant)
    tops = [os.path.realpath(p) for p in parents]
    for i, (_named, real) in enumerate(roots):
        top = next((t for t in tops if _inside(real, os.path.join(t, name))), None)
        if top is None:
            raise _refuse(i)
        try:
            os.makedirs(top, mode=0o700, exist_ok=True)
            fd = os.open(top, _DIR_FLAGS)
        except OSError as exc:
            raise InvalidParams(f"fs_policy.roots[{i}] cannot be created: {exc.strerror}",
                                data={"field": "fs_policy.roots", "index": i}) from exc
        path = top
        try:
            for part in os.path.relpath(real, top).split(os.sep):
                path = os.path.join(path, part)
                try:
                    os.mkdir(part, 0o700, dir_fd=fd)
                    created.append(path)
                except FileExistsError:
                    pass
                try:
                    nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:  # a symlink (ELOOP) or a file (ENOTDIR)
                    raise _refuse(i) from exc
                os.close(fd)
                fd = nfd
        except OSError as exc:
            raise InvalidParams(f"fs_policy.roots[{i}] cannot be created: {exc.strerror}",
                                data={"field": "fs_policy.roots", "index": i}) from exc
        finally:
            os.close(fd)
    return created


def remove_created(created: list[str]) -> None:
    """Undo :func:`create_roots` after a later failure: remove its directories, deepest
    first, where they are still empty."""
    for path in reversed(created):
        with contextlib.suppress(OSError):
            os.rmdir(path)


def sweep_temp_files(parents: list[str]) -> int:
    """Remove the broker's temporary files a crash left under every allowed parent.

    The walk never follows a symlink (``os.fwalk`` with ``follow_symlinks=False``) and
    removes only regular files named like :func:`is_temp_name`. A directory whose
    ``flock`` another process holds (a live write in it) is skipped.

    Args:
        parents: the operator's allowed parents; missing ones are skipped.

    Returns:
        How many files were removed.
    """
    removed = 0
    for parent in parents:
        if not os.path.isdir(parent):
            continue
        for _dirpath, _dirs, files, dfd in os.fwalk(parent, follow_symlinks=False):
            names = [n for n in files if is_temp_name(n)]
            if not names:
                continue
            try:
                fcntl.flock(dfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue
            try:
                for name in names:
                    with contextlib.suppress(FileNotFoundError):
                        if stat.S_ISREG(os.stat(name, dir_fd=dfd,
                                                follow_symlinks=False).st_mode):
                            os.unlink(name, dir_fd=dfd)
                            removed += 1
            finally:
                fcntl.flock(dfd, fcntl.LOCK_UN)
    return removed
