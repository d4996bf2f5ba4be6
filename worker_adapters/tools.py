"""Tool executors behind one small interface (planned ``tool_call`` Steps, NERVE-4011).

The OPERATOR's server config defines executors by name; a Flow's tool only names one
(``executor``), so a client can never make the server run a command of its choosing.
A client supplies JSON arguments, and they reach an executor only as data:

* ``http``: the arguments are POSTed as a JSON body to the configured URL;
* ``argv``: the configured argv template is spawned directly (never through a shell,
  never split on spaces), the arguments are written to its stdin as JSON, and a template
  element that is exactly ``"{name}"`` becomes one argv element holding the string form
  of the scalar argument ``name``.

Every failure of the tool itself (unreachable, timed out, non-zero exit, too much output,
output that is not JSON) is an :class:`~contracts.errors.EngineError` whose ``data``
names the tool. A child process is killed with its whole process group on timeout or
cancellation and is always reaped. Its environment is minimal (``PATH`` and
``LANG=C.UTF-8`` plus the configured ``env``): the server's secrets are not inherited.
"""

from __future__ import annotations

import abc
import contextlib
import math
import os
import pathlib
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import anyio.abc
import httpx
import msgspec

from contracts.errors import EngineError, InvalidParams, InvalidToolArgs
from contracts.limits import Name
from worker_adapters.base import _PLACEHOLDER, ToolExecutorConfig
from worker_adapters.builtin_tools import ARG_SCHEMAS, TOOLS
from worker_adapters.tool_catalogue import Catalogued, describe_executors

__all__ = [
    "ArgvToolExecutor",
    "HttpToolExecutor",
    "ToolExecutor",
    "ToolExecutorConfig",
    "ToolRegistry",
    "build_executor",
    "default_tool_executors",
    "render_argv",
    "tool_registry",
]

_STDERR_TAIL_BYTES = 4096
"""How much of a child's stderr is kept (its last bytes) for the error data."""

_HTTP_DETAIL_BYTES = 500
"""How much of a non-2xx HTTP body is kept for the error data."""

_READ_CHUNK_BYTES = 65_536


class ToolExecutor(abc.ABC):
    """Runs one operator-configured tool: JSON arguments in, one JSON value out.

    ``calls`` counts every execution attempt (each :meth:`call`), so tests can prove
    that arguments refused earlier never reach the executor.

    Args:
        name: the executor's name in the operator config.
        config: its configuration.
    """

    def __init__(self, name: str, config: ToolExecutorConfig) -> None:
        self.name = name
        self.config = config
        self.calls = 0

    @abc.abstractmethod
    async def call(self, args: dict[str, Any]) -> Any:
        """Run the tool once with ``args`` and return its decoded JSON result.

        Args:
            args: the tool arguments, a JSON object.

        Returns:
            The JSON value the tool produced.

        Raises:
            InvalidToolArgs: ``args`` cannot be passed to this tool (not JSON, or a
                placeholder's argument is missing or not a scalar).
            EngineError: the tool failed, timed out or answered out of contract.
        """

    async def aclose(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release connections held by the executor."""

    def _error(self, message: str, **data: Any) -> EngineError:
        return EngineError(f"tool {self.name!r} {message}", data={"tool": self.name, **data})

    def _decode(self, output: bytes) -> Any:
        try:
            return msgspec.json.decode(output)
        except msgspec.DecodeError as exc:
            raise self._error(f"output is not JSON: {exc}",
                              output_head=_text(output[:200])) from exc

    def _encode_args(self, args: dict[str, Any]) -> bytes:
        try:
            return msgspec.json.encode(args)
        except (TypeError, ValueError) as exc:  # UnicodeEncodeError is a ValueError
            raise InvalidToolArgs(f"tool {self.name!r} arguments are not JSON: {exc}",
                                  data={"tool": self.name}) from exc


class HttpToolExecutor(ToolExecutor):
    """POSTs the arguments as JSON to ``config.url``; a 2xx JSON body is the result.

    The whole call, connection included, is bounded by ``config.timeout_ms``; the body
    by ``config.max_output_bytes``. Redirects are not followed (a 3xx is a failure).
    Error data carries the status and a body excerpt, never the URL or the headers.

    Args:
        name: the executor's name.
        config: an ``http`` configuration.
        transport: optional httpx transport (``httpx.MockTransport`` in tests).
    """

    def __init__(
        self,
        name: str,
        config: ToolExecutorConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if config.kind != "http" or config.url is None:
            raise InvalidParams(f"tool executor {name!r} is not an http executor",
                                data={"tool": name})
        super().__init__(name, config)
        self._url: str = config.url
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(config.timeout_s),
            headers={**config.headers, "content-type": "application/json"},
        )

    async def call(self, args: dict[str, Any]) -> Any:
        """POST ``args`` and decode the JSON answer.

        Raises:
            InvalidToolArgs: ``args`` is not JSON-encodable.
            EngineError: connection failure or timeout (``data["timeout_ms"]``), a
                non-2xx status (``data["status"]``, ``data["detail"]``), a body over
                ``max_output_bytes`` or a body that is not JSON.
        """
        self.calls += 1
        body = self._encode_args(args)
        try:
            with anyio.fail_after(self.config.timeout_s):
                status, content = await self._post(body)
        except TimeoutError:
            raise self._error(f"timed out after {self.config.timeout_ms} ms",
                              timeout_ms=self.config.timeout_ms) from None
        except httpx.HTTPError as exc:
            raise self._error(f"request failed: {type(exc).__name__}: {exc}") from exc
        if not 200 <= status < 300:
            detail = content[:_HTTP_DETAIL_BYTES].decode("utf-8", "replace")
            raise self._error(f"answered HTTP {status}", status=status, detail=detail)
        return self._decode(content)

    async def _post(self, body: bytes) -> tuple[int, bytes]:
        """Send the request; return the status and the body read up to the limit."""
        limit = self.config.max_output_bytes
        async with self._client.stream("POST", self._url, content=body) as resp:
            if not 200 <= resp.status_code < 300:
                return resp.status_code, await _read_at_most(resp, _HTTP_DETAIL_BYTES)
            content = await _read_at_most(resp, limit + 1)
            if len(content) > limit:
                raise self._error(f"output exceeds {limit} bytes", max_output_bytes=limit)
            return resp.status_code, content

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._client.aclose()


async def _read_at_most(resp: httpx.Response, limit: int) -> bytes:
    """Read a streamed response body, stopping once ``limit`` bytes are held."""
    buf = bytearray()
    async for chunk in resp.aiter_bytes():
        buf += chunk
        if len(buf) >= limit:
            break
    return bytes(buf[:limit])


class ArgvToolExecutor(ToolExecutor):
    """Spawns the rendered argv template, feeds the arguments as JSON on stdin, and
    decodes stdout as JSON.

    No shell is involved. The child starts in a new session (its own process group), so
    on timeout, cancellation or oversized output the whole group is SIGKILLed; the child
    is always waited for (no zombie). stdout is bounded by ``max_output_bytes``; the
    last 4 KiB of stderr are kept for the error data.

    Args:
        name: the executor's name.
        config: an ``argv`` configuration.
    """

    def __init__(self, name: str, config: ToolExecutorConfig) -> None:
        if config.kind != "argv" or not config.argv:
            raise InvalidParams(f"tool executor {name!r} is not an argv executor",
                                data={"tool": name})
        super().__init__(name, config)
        self._template: tuple[str, ...] = tuple(config.argv)

    def child_env(self) -> dict[str, str]:
        """The child's whole environment: ``PATH``, ``LANG=C.UTF-8``, then ``env``."""
        return {"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8",
                **self.config.env}

    async def call(self, args: dict[str, Any]) -> Any:
        """Run the process once with ``args`` on stdin.

        Raises:
            InvalidToolArgs: a placeholder's argument is missing or not a scalar, or
                ``args`` is not JSON-encodable.
            EngineError: the process could not start, timed out (``data["timeout_ms"]``),
                exceeded ``max_output_bytes``, exited non-zero (``data["exit_code"]`` and
                ``data["stderr_tail"]``) or wrote stdout that is not JSON.
        """
        self.calls += 1
        argv = render_argv(self._template, args, tool=self.name)
        stdin = self._encode_args(args)
        stderr_tail = bytearray()
        try:
            with anyio.fail_after(self.config.timeout_s):
                exit_code, stdout = await self._run(argv, stdin, stderr_tail)
        except TimeoutError:
            raise self._error(f"timed out after {self.config.timeout_ms} ms",
                              timeout_ms=self.config.timeout_ms,
                              stderr_tail=_text(stderr_tail)) from None
        if stdout is None:
            limit = self.config.max_output_bytes
            raise self._error(f"output exceeds {limit} bytes", max_output_bytes=limit,
                              stderr_tail=_text(stderr_tail))
        if exit_code != 0:
            raise self._error(f"exited with code {exit_code}", exit_code=exit_code,
                              stderr_tail=_text(stderr_tail))
        return self._decode(stdout)

    async def _run(
        self, argv: list[str], stdin: bytes, stderr_tail: bytearray
    ) -> tuple[int, bytes | None]:
        """Spawn, feed and drain the child; return its exit code and stdout (``None``
        when stdout went over the limit and the child was killed)."""
        try:
            # Shielded: a cancellation mid-spawn must not leave a child we hold no handle to.
            with anyio.CancelScope(shield=True):
                proc = await anyio.open_process(
                    argv, cwd=self.config.cwd, env=self.child_env(),
                    start_new_session=sys.platform != "win32",
                )
        except OSError as exc:
            raise self._error(f"could not start: {type(exc).__name__}: {exc}") from exc
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_feed, proc, stdin)
                tg.start_soon(_drain_tail, proc, stderr_tail)
                stdout = await _read_bounded(proc, self.config.max_output_bytes)
                if stdout is None:
                    _kill(proc)
            exit_code = await proc.wait()
        except BaseException:
            with anyio.CancelScope(shield=True):
                _kill(proc)
                await proc.wait()
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await proc.aclose()  # the child is reaped by now; this closes the pipes
        return exit_code, stdout


def _kill(proc: anyio.abc.Process) -> None:
    """SIGKILL the child's process group (grandchildren included), then the child.

    Only called before the child is reaped, so its pid (the group id) is still ours.
    """
    if proc.returncode is not None:
        return
    if sys.platform != "win32":
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


async def _feed(proc: anyio.abc.Process, payload: bytes) -> None:
    """Write the arguments to the child's stdin and close it; a child that exits
    without reading them is not an error here (its exit code tells)."""
    assert proc.stdin is not None
    try:
        await proc.stdin.send(payload)
        await proc.stdin.aclose()
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, BrokenPipeError,
            ConnectionResetError):
        pass


async def _drain_tail(proc: anyio.abc.Process, tail: bytearray) -> None:
    """Read stderr to its end, keeping only the last ``_STDERR_TAIL_BYTES``."""
    assert proc.stderr is not None
    try:
        async for chunk in proc.stderr:
            tail += chunk
            del tail[:-_STDERR_TAIL_BYTES]
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass


async def _read_bounded(proc: anyio.abc.Process, limit: int) -> bytes | None:
    """Read stdout to its end; ``None`` as soon as it exceeds ``limit`` bytes."""
    assert proc.stdout is not None
    buf = bytearray()
    try:
        while True:
            buf += await proc.stdout.receive(_READ_CHUNK_BYTES)
            if len(buf) > limit:
                return None
    except anyio.EndOfStream:
        return bytes(buf)


def _text(data: bytes | bytearray) -> str:
    return bytes(data).decode("utf-8", "replace")


def render_argv(template: Sequence[str], args: Mapping[str, Any], *, tool: str) -> list[str]:
    """Substitute ``"{name}"`` template elements with the scalar argument ``name``.

    Each placeholder becomes exactly one argv element; nothing is split or interpreted.
    Strings pass unchanged; booleans become ``true``/``false``; integers and finite
    floats their decimal form (``repr``).

    Args:
        template: the configured argv template.
        args: the call's arguments.
        tool: the executor's name, for the error data.

    Returns:
        The argv to spawn.

    Raises:
        InvalidToolArgs: a placeholder's argument is missing, not a scalar, a non-finite
            float or a string containing NUL; ``data`` holds ``tool`` and ``argument``.
    """
    argv: list[str] = []
    for element in template:
        match = _PLACEHOLDER.fullmatch(element)
        argv.append(element if match is None else _scalar(args, match.group(1), tool))
    return argv


def _scalar(args: Mapping[str, Any], name: str, tool: str) -> str:
    def refuse(why: str) -> InvalidToolArgs:
        return InvalidToolArgs(f"tool {tool!r} argument {name!r} {why}",
                               data={"tool": tool, "argument": name})

    if name not in args:
        raise refuse("is missing")
    value = args[name]
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        if "\0" in value:
            raise refuse("contains NUL")
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise refuse("is not a finite number")
        return repr(value)
    raise refuse(f"must be a string, number or boolean, not {type(value).__name__}")


def build_executor(
    name: str,
    config: ToolExecutorConfig,
    *,
    http_transport: httpx.AsyncBaseTransport | None = None,
) -> ToolExecutor:
    """The executor for one configuration, dispatched on ``config.kind``.

    Args:
        name: the executor's name.
        config: its configuration.
        http_transport: optional httpx transport for ``http`` executors (tests).

    Returns:
        An :class:`HttpToolExecutor` or an :class:`ArgvToolExecutor`.
    """
    match config.kind:
        case "http":
            return HttpToolExecutor(name, config, transport=http_transport)
        case "argv":
            return ArgvToolExecutor(name, config)


class ToolRegistry(Catalogued):
    """The operator's tool executors, looked up by the name a Flow's tool references.

    Args:
        configs: executor configurations by name (names as for a Flow's ``executor``:
            1 to 128 characters of ``[A-Za-z0-9_.:-]``).
        http_transport: optional httpx transport for every ``http`` executor (tests).
        schemas: the built-in tools' argument schemas by name (NERVE-4076).

    Raises:
        InvalidParams: a name is invalid; ``data["tool"]`` holds it.
    """

    def __init__(
        self,
        configs: Mapping[str, ToolExecutorConfig],
        *,
        http_transport: httpx.AsyncBaseTransport | None = None,
        schemas: Mapping[str, dict[str, Any]] | None = None,
    ) -> None:
        self._catalogue = describe_executors(configs, schemas or {})
        for name in configs:
            try:
                msgspec.convert(name, Name)
            except msgspec.ValidationError as exc:
                raise InvalidParams(f"invalid tool executor name {name!r}: {exc}",
                                    data={"tool": name}) from exc
        self._executors: dict[str, ToolExecutor] = {
            name: build_executor(name, config, http_transport=http_transport)
            for name, config in configs.items()
        }

    def get(self, name: str) -> ToolExecutor:
        """The executor named ``name``.

        Raises:
            InvalidParams: no executor has that name; ``data["tool"]`` holds it.
        """
        try:
            return self._executors[name]
        except KeyError:
            raise InvalidParams(f"no tool executor named {name!r}",
                                data={"tool": name}) from None

    def names(self) -> list[str]:
        """The configured executor names, sorted."""
        return sorted(self._executors)

    async def aclose(self) -> None:
        """Close every executor's connections."""
        for executor in self._executors.values():
            await executor.aclose()


def default_tool_executors() -> dict[str, ToolExecutorConfig]:
    """The built-in executors: ``json_query``, ``sha256`` and ``wc``.

    Each runs ``<this interpreter> -P -m worker_adapters.builtin_tools <tool>`` (see that
    module for inputs and outputs) with ``PYTHONPATH`` set to the directory holding this
    package, so the child runs the same code as the server whatever its working
    directory.

    Returns:
        Configurations by executor name, with the default timeout and output limit.
    """
    package_root = str(pathlib.Path(__file__).resolve().parent.parent)
    return {
        tool: ToolExecutorConfig(
            kind="argv",
            argv=[sys.executable, "-P", "-m", "worker_adapters.builtin_tools", tool],
            env={"PYTHONPATH": package_root},
        )
        for tool in sorted(TOOLS)
    }


def tool_registry(configs: Mapping[str, ToolExecutorConfig] | None) -> ToolRegistry:
    """The app's :data:`~worker_adapters.base.ToolsFactory`: the operator's executors, or
    the built-in ones (:func:`default_tool_executors`) when the config names none.

    Raises:
        InvalidParams: an executor name is invalid; ``data["tool"]`` holds it.
    """
    return (ToolRegistry(default_tool_executors(), schemas=ARG_SCHEMAS) if configs is None
            else ToolRegistry(configs))
