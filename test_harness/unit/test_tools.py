"""Tool executors: operator-configured argv and HTTP tools, and the built-in tools.

Argv executors spawn real subprocesses of this interpreter; HTTP executors run over
``httpx.MockTransport``.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time
from typing import Any

import anyio
import httpx
import msgspec
import pytest

from contracts.errors import EngineError, ErrorCode, InvalidParams, InvalidToolArgs
from worker_adapters.builtin_tools import BadInput, parse_path
from worker_adapters.tools import (
    ArgvToolExecutor,
    HttpToolExecutor,
    ToolExecutorConfig,
    ToolRegistry,
    default_tool_executors,
    render_argv,
)

PY = sys.executable

ECHO = ("import sys,json; "
        "print(json.dumps({'argv': sys.argv[1:], 'stdin': json.load(sys.stdin)}))")
"""Prints its arguments and the JSON it read on stdin."""

SLEEPER = """\
import os, subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
with open(sys.argv[1], "w") as f:
    f.write(f"{os.getpid()} {grandchild.pid}")
time.sleep(30)
"""
"""Starts a grandchild, writes both pids to the file named by argv[1], sleeps 30 s."""


def _argv_tool(*template: str, **options: Any) -> ArgvToolExecutor:
    return ArgvToolExecutor("t", ToolExecutorConfig(kind="argv", argv=list(template),
                                                    **options))


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie awaiting its reaper counts as dead)."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def _gone(*pids: int, within_s: float = 2.0) -> bool:
    deadline = time.monotonic() + within_s
    while any(_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        await anyio.sleep(0.02)
    return True


def _pids(path: pathlib.Path) -> list[int]:
    return [int(p) for p in path.read_text().split()]


class TestToolExecutorConfig:
    """A configuration is checked when it is built or decoded."""

    @pytest.mark.parametrize(
        ("fields", "field"),
        [
            ({"kind": "http"}, "url"),
            ({"kind": "http", "url": "ftp://x/"}, "url"),
            ({"kind": "http", "url": "http://x/", "argv": ["ls"]}, "argv"),
            ({"kind": "argv"}, "argv"),
            ({"kind": "argv", "argv": []}, "argv"),
            ({"kind": "argv", "argv": ["{program}", "x"]}, "argv"),
            ({"kind": "argv", "argv": ["ls"], "url": "http://x/"}, "url"),
            ({"kind": "argv", "argv": ["ls"], "timeout_ms": 0}, "timeout_ms"),
            ({"kind": "argv", "argv": ["ls"], "max_output_bytes": -1}, "max_output_bytes"),
        ],
    )
    def test_inconsistent_fields_are_invalid_params(self, fields: dict[str, Any],
                                                    field: str) -> None:
        """A missing url or argv, a field of the other kind, a templated program or a
        non-positive limit is INVALID_PARAMS naming the field."""
        with pytest.raises(InvalidParams) as info:
            msgspec.convert(fields, ToolExecutorConfig)
        assert info.value.data == {"field": field}

    def test_unknown_fields_are_refused(self) -> None:
        """Operator config is decoded strictly."""
        with pytest.raises(msgspec.ValidationError, match="unknown field `shell`"):
            msgspec.json.decode(b'{"kind": "argv", "argv": ["ls"], "shell": true}',
                                type=ToolExecutorConfig)

    def test_defaults(self) -> None:
        """Timeout 10 s and output limit 1 MiB unless configured."""
        config = ToolExecutorConfig(kind="argv", argv=["ls"])
        assert (config.timeout_ms, config.max_output_bytes, config.env, config.cwd) == \
            (10_000, 1_048_576, {}, None)


class TestRenderArgv:
    """Only whole ``{name}`` elements are placeholders; each becomes one element."""

    def test_scalars_become_single_elements(self) -> None:
        """Strings pass unchanged, booleans become true/false, numbers their decimal form;
        anything else, even with braces, is literal."""
        args = {"s": "a b; c", "i": -3, "f": 0.5, "b": True}
        assert render_argv(["prog", "{s}", "{i}", "{f}", "{b}", "--x={s}", "{s}{i}"], args,
                           tool="t") == ["prog", "a b; c", "-3", "0.5", "true", "--x={s}",
                                         "{s}{i}"]

    @pytest.mark.parametrize("value", [None, [1], {"a": 1}, float("inf"), "a\0b"])
    def test_a_non_scalar_argument_is_refused(self, value: object) -> None:
        """Null, arrays, objects, non-finite floats and NUL bytes cannot be an argv element."""
        with pytest.raises(InvalidToolArgs) as info:
            render_argv(["prog", "{x}"], {"x": value}, tool="t")
        assert info.value.data == {"tool": "t", "argument": "x"}

    def test_a_missing_argument_is_refused(self) -> None:
        """A placeholder without its argument is INVALID_TOOL_ARGS naming the argument."""
        with pytest.raises(InvalidToolArgs, match="argument 'x' is missing") as info:
            render_argv(["prog", "{x}"], {}, tool="t")
        assert info.value.data == {"tool": "t", "argument": "x"}


class TestArgvToolExecutor:
    """A real child process: argv from the template, JSON on stdin, JSON from stdout."""

    @pytest.mark.anyio
    async def test_placeholders_and_stdin(self) -> None:
        """The template's placeholder is replaced; the whole arguments arrive on stdin."""
        tool = _argv_tool(PY, "-c", ECHO, "{name}", "literal")
        assert await tool.call({"name": "world", "n": 2}) == {
            "argv": ["world", "literal"], "stdin": {"name": "world", "n": 2}}

    @pytest.mark.anyio
    async def test_no_shell_interpretation(self) -> None:
        """Shell syntax in an argument arrives as one literal argv element."""
        tool = _argv_tool(PY, "-c", ECHO, "{name}")
        hostile = "; rm -rf / $(id) `id` * && echo pwned"
        result = await tool.call({"name": hostile})
        assert result["argv"] == [hostile]

    @pytest.mark.anyio
    async def test_invalid_arguments_start_no_process(self, tmp_path: pathlib.Path) -> None:
        """A refused argument is INVALID_TOOL_ARGS and nothing is spawned."""
        marker = tmp_path / "ran"
        tool = _argv_tool(PY, "-c", f"open({str(marker)!r}, 'w')", "{name}")
        with pytest.raises(InvalidToolArgs):
            await tool.call({"name": ["not", "scalar"]})
        assert (marker.exists(), tool.calls) == (False, 1)

    @pytest.mark.anyio
    async def test_timeout_kills_the_child_and_its_children(
            self, tmp_path: pathlib.Path) -> None:
        """Past timeout_ms the process group is killed and reaped; the error is ENGINE_ERROR."""
        pidfile = tmp_path / "pids"
        # 1 s leaves a loaded 2-core CI machine time to start both processes
        tool = _argv_tool(PY, "-c", SLEEPER, "{pidfile}", timeout_ms=1000)
        started = time.monotonic()
        with pytest.raises(EngineError) as info:
            await tool.call({"pidfile": str(pidfile)})
        assert time.monotonic() - started < 3.0
        assert (info.value.code, info.value.retriable, info.value.message, info.value.data) \
            == (ErrorCode.ENGINE_ERROR, True, "tool 't' timed out after 1000 ms",
                {"tool": "t", "timeout_ms": 1000, "stderr_tail": ""})
        child, grandchild = _pids(pidfile)
        assert not _alive(child)
        assert await _gone(grandchild)

    @pytest.mark.anyio
    async def test_cancellation_kills_the_child(self, tmp_path: pathlib.Path) -> None:
        """Cancelling the caller's scope kills and reaps the process group too."""
        pidfile = tmp_path / "pids"
        tool = _argv_tool(PY, "-c", SLEEPER, "{pidfile}")
        with anyio.move_on_after(1.0) as scope:
            await tool.call({"pidfile": str(pidfile)})
        assert scope.cancelled_caught
        child, grandchild = _pids(pidfile)
        assert not _alive(child)
        assert await _gone(grandchild)

    @pytest.mark.anyio
    async def test_non_zero_exit_carries_code_and_stderr_tail(self) -> None:
        """Exit status 3 is ENGINE_ERROR with the code and the last 4 KiB of stderr."""
        tool = _argv_tool(PY, "-c",
                          "import sys; sys.stderr.write('x' * 5000 + 'boom'); sys.exit(3)")
        with pytest.raises(EngineError, match=r"^tool 't' exited with code 3$") as info:
            await tool.call({})
        assert info.value.data == {"tool": "t", "exit_code": 3,
                                   "stderr_tail": ("x" * 5000 + "boom")[-4096:]}

    @pytest.mark.anyio
    async def test_stdout_that_is_not_json(self) -> None:
        """A clean exit with non-JSON stdout is ENGINE_ERROR with the output's head."""
        tool = _argv_tool(PY, "-c", "print('not json')")
        with pytest.raises(EngineError, match=r"^tool 't' output is not JSON") as info:
            await tool.call({})
        assert info.value.data == {"tool": "t", "output_head": "not json\n"}

    @pytest.mark.anyio
    async def test_output_over_the_limit_kills_the_child(self) -> None:
        """A child writing without end is killed once stdout passes max_output_bytes."""
        tool = _argv_tool(PY, "-c", "import sys\nwhile True: sys.stdout.write('x' * 65536)",
                          max_output_bytes=100_000)
        with pytest.raises(EngineError, match=r"^tool 't' output exceeds 100000 bytes$") as info:
            await tool.call({})
        assert info.value.data == {"tool": "t", "max_output_bytes": 100_000, "stderr_tail": ""}

    @pytest.mark.anyio
    async def test_environment_is_minimal(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The child sees PATH, LANG and the configured env, not the server's secrets."""
        monkeypatch.setenv("ORCH_TOOL_TEST_SECRET", "hunter2")
        tool = _argv_tool(PY, "-c", "import os, json; print(json.dumps(dict(os.environ)))",
                          env={"TOOL_MODE": "fast"})
        assert await tool.call({}) == {"PATH": os.environ["PATH"], "LANG": "C.UTF-8",
                                       "TOOL_MODE": "fast"}

    @pytest.mark.anyio
    async def test_cwd(self, tmp_path: pathlib.Path) -> None:
        """The child runs in the configured working directory."""
        tool = _argv_tool(PY, "-c", "import os, json; print(json.dumps(os.getcwd()))",
                          cwd=str(tmp_path))
        assert await tool.call({}) == str(tmp_path)

    @pytest.mark.anyio
    async def test_a_child_that_ignores_large_stdin(self) -> None:
        """Arguments larger than a pipe buffer do not block a child that never reads them."""
        tool = _argv_tool(PY, "-c", "print('{}')")
        assert await tool.call({"text": "y" * 1_000_000}) == {}

    @pytest.mark.anyio
    async def test_a_program_that_cannot_start(self, tmp_path: pathlib.Path) -> None:
        """A missing program is ENGINE_ERROR naming the tool."""
        tool = _argv_tool(str(tmp_path / "missing"))
        with pytest.raises(EngineError, match=r"^tool 't' could not start") as info:
            await tool.call({})
        assert info.value.data == {"tool": "t"}

    @pytest.mark.anyio
    async def test_calls_counts_every_attempt(self) -> None:
        """Successful and failed calls each increment ``calls``."""
        tool = _argv_tool(PY, "-c", "import sys, json; sys.exit(json.load(sys.stdin)['rc'])")
        with pytest.raises(EngineError):
            await tool.call({"rc": 1})
        with pytest.raises(EngineError):  # exit 0 with empty stdout is not JSON
            await tool.call({"rc": 0})
        assert tool.calls == 2


class TestBuiltinTools:
    """The default executors run ``python -m worker_adapters.builtin_tools <tool>``."""

    @pytest.fixture
    async def registry(self) -> Any:
        registry = ToolRegistry(default_tool_executors())
        yield registry
        await registry.aclose()

    def test_the_default_executors(self) -> None:
        """wc, json_query and sha256 are argv executors of this interpreter."""
        configs = default_tool_executors()
        assert sorted(configs) == ["json_query", "sha256", "wc"]
        assert configs["wc"].argv == [PY, "-P", "-m", "worker_adapters.builtin_tools", "wc"]

    @pytest.mark.anyio
    async def test_wc(self, registry: ToolRegistry) -> None:
        """Newlines, whitespace-separated words, code points and UTF-8 bytes."""
        assert await registry.get("wc").call({"text": "héllo wörld\nbye\n"}) == {
            "lines": 2, "words": 3, "chars": 16, "bytes": 18}

    @pytest.mark.anyio
    async def test_wc_on_a_large_text(self, registry: ToolRegistry) -> None:
        """Two megabytes in and the answer out do not deadlock on pipe buffers."""
        assert await registry.get("wc").call({"text": "ab cd\n" * 350_000}) == {
            "lines": 350_000, "words": 700_000, "chars": 2_100_000, "bytes": 2_100_000}

    @pytest.mark.anyio
    async def test_sha256(self, registry: ToolRegistry) -> None:
        """The hex SHA-256 of the text's UTF-8 bytes."""
        assert await registry.get("sha256").call({"text": "abc"}) == {
            "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}

    @pytest.mark.anyio
    @pytest.mark.parametrize(
        ("path", "expected"),
        [
            ("a.b[1].c", {"value": [True, None], "found": True}),
            ('a.b[0]["odd key.[]"]', {"value": 7, "found": True}),
            ("", {"value": {"a": {"b": [{"odd key.[]": 7}, {"c": [True, None]}]}},
                  "found": True}),
            ("a.b[2]", {"value": None, "found": False}),
            ("a.missing.c", {"value": None, "found": False}),
            ("a[0]", {"value": None, "found": False}),
        ],
    )
    async def test_json_query(self, registry: ToolRegistry, path: str,
                              expected: dict[str, Any]) -> None:
        """Keys into objects, indices into lists; an unresolved path is not found."""
        document = {"a": {"b": [{"odd key.[]": 7}, {"c": [True, None]}]}}
        assert await registry.get("json_query").call(
            {"document": document, "path": path}) == expected

    @pytest.mark.anyio
    async def test_bad_input_exits_2_with_a_message(self, registry: ToolRegistry) -> None:
        """A mistyped field is exit status 2 and a one-line stderr message."""
        with pytest.raises(EngineError) as info:
            await registry.get("wc").call({"text": 1})
        assert info.value.data == {"tool": "wc", "exit_code": 2,
                                   "stderr_tail": "wc: Expected `str`, got `int` - at `$.text`\n"}

    @pytest.mark.anyio
    async def test_a_bad_path_exits_2(self, registry: ToolRegistry) -> None:
        """An unparsable path is bad input, not a lookup miss."""
        with pytest.raises(EngineError) as info:
            await registry.get("json_query").call({"document": {}, "path": "a..b"})
        assert info.value.data == {
            "tool": "json_query", "exit_code": 2,
            "stderr_tail": "json_query: invalid path 'a..b' at offset 2: expected a name\n"}

    @pytest.mark.anyio
    async def test_independent_of_the_working_directory(self, tmp_path: pathlib.Path) -> None:
        """The child imports the server's own package from any working directory."""
        config = msgspec.structs.replace(default_tool_executors()["sha256"], cwd=str(tmp_path))
        assert await ArgvToolExecutor("sha256", config).call({"text": ""}) == {
            "sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}


class TestParsePath:
    """The json_query path language is small and strict."""

    def test_segments(self) -> None:
        """Names, indices and quoted keys become keys and ints."""
        assert parse_path('a.b_c-d[0][12]["x.y\\"z"].e') == \
            ["a", "b_c-d", 0, 12, 'x.y"z', "e"]

    @pytest.mark.parametrize(
        "path", [".a", "a.", "a..b", "a[", "a[-1]", "a[01]", "a[x]", "a[0", "a b", "1a",
                 "a['x']", 'a["x]', "a[__import__('os')]"])
    def test_malformed_paths(self, path: str) -> None:
        """Anything outside the grammar is refused, never evaluated."""
        with pytest.raises(BadInput, match=r"^invalid path"):
            parse_path(path)


class TestHttpToolExecutor:
    """POST the arguments as JSON; a 2xx JSON body is the result."""

    @staticmethod
    def _tool(handler: Any, **options: Any) -> HttpToolExecutor:
        config = ToolExecutorConfig(kind="http", url="http://tools.local/run",
                                    headers={"x-api-key": "k"}, **options)
        return HttpToolExecutor("h", config, transport=httpx.MockTransport(handler))

    @pytest.mark.anyio
    async def test_success(self) -> None:
        """The request is a JSON POST with the configured headers; the body is returned."""
        seen: list[tuple[str, str, Any, str, str]] = []

        def handler(request: httpx.Request) -> httpx.Response:
            seen.append((request.method, str(request.url), json.loads(request.content),
                         request.headers["content-type"], request.headers["x-api-key"]))
            return httpx.Response(200, json={"ok": [1, 2]})

        tool = self._tool(handler)
        assert await tool.call({"a": 1}) == {"ok": [1, 2]}
        await tool.aclose()
        assert seen == [("POST", "http://tools.local/run", {"a": 1}, "application/json", "k")]
        assert tool.calls == 1

    @pytest.mark.anyio
    async def test_a_server_error(self) -> None:
        """A 500 is ENGINE_ERROR with the status and the body's head, not the URL."""
        tool = self._tool(lambda r: httpx.Response(500, text="boom"))
        with pytest.raises(EngineError, match=r"^tool 'h' answered HTTP 500$") as info:
            await tool.call({})
        await tool.aclose()
        assert info.value.data == {"tool": "h", "status": 500, "detail": "boom"}

    @pytest.mark.anyio
    async def test_a_body_that_is_not_json(self) -> None:
        """A 200 with an HTML body is ENGINE_ERROR."""
        tool = self._tool(lambda r: httpx.Response(200, text="<html>"))
        with pytest.raises(EngineError, match=r"^tool 'h' output is not JSON") as info:
            await tool.call({})
        await tool.aclose()
        assert info.value.data == {"tool": "h", "output_head": "<html>"}

    @pytest.mark.anyio
    async def test_a_body_over_the_limit(self) -> None:
        """A body longer than max_output_bytes is ENGINE_ERROR."""
        tool = self._tool(lambda r: httpx.Response(200, json=["x" * 100]), max_output_bytes=50)
        with pytest.raises(EngineError, match=r"^tool 'h' output exceeds 50 bytes$") as info:
            await tool.call({})
        await tool.aclose()
        assert info.value.data == {"tool": "h", "max_output_bytes": 50}

    @pytest.mark.anyio
    async def test_a_connection_failure(self) -> None:
        """A transport error is ENGINE_ERROR naming the tool."""
        def handler(request: httpx.Request) -> httpx.Response:
            raise httpx.ConnectError("refused", request=request)

        tool = self._tool(handler)
        with pytest.raises(EngineError, match=r"^tool 'h' request failed: ConnectError") \
                as info:
            await tool.call({})
        await tool.aclose()
        assert info.value.data == {"tool": "h"}

    @pytest.mark.anyio
    async def test_a_slow_server_times_out(self) -> None:
        """The whole call is bounded by timeout_ms."""
        async def handler(request: httpx.Request) -> httpx.Response:
            await anyio.sleep(5)
            return httpx.Response(200, json={})

        tool = self._tool(handler, timeout_ms=100)
        started = time.monotonic()
        with pytest.raises(EngineError, match=r"^tool 'h' timed out after 100 ms$") as info:
            await tool.call({})
        await tool.aclose()
        assert time.monotonic() - started < 1.0
        assert info.value.data == {"tool": "h", "timeout_ms": 100}


class TestToolRegistry:
    """Executors are looked up by operator-configured name only."""

    @pytest.mark.anyio
    async def test_lookup_by_name(self) -> None:
        """Each name gets an executor of its kind; names are sorted."""
        registry = ToolRegistry({
            "web": ToolExecutorConfig(kind="http", url="http://tools.local/"),
            "echo": ToolExecutorConfig(kind="argv", argv=[PY, "-c", ECHO]),
        })
        assert registry.names() == ["echo", "web"]
        assert (type(registry.get("echo")), type(registry.get("web"))) == \
            (ArgvToolExecutor, HttpToolExecutor)
        await registry.aclose()

    def test_an_unknown_name_is_invalid_params(self) -> None:
        """A name the operator did not configure is INVALID_PARAMS naming it."""
        registry = ToolRegistry({})
        with pytest.raises(InvalidParams, match=r"^no tool executor named 'rm'$") as info:
            registry.get("rm")
        assert info.value.data == {"tool": "rm"}

    def test_an_invalid_name_is_refused(self) -> None:
        """Executor names follow the Flow's executor-name pattern."""
        with pytest.raises(InvalidParams) as info:
            ToolRegistry({"bad name": ToolExecutorConfig(kind="argv", argv=["ls"])})
        assert info.value.data == {"tool": "bad name"}

    @pytest.mark.anyio
    async def test_calls_counter(self) -> None:
        """``calls`` counts each call of the named executor."""
        registry = ToolRegistry({"echo": ToolExecutorConfig(kind="argv", argv=[PY, "-c", ECHO])})
        echo = registry.get("echo")
        for n in range(3):
            assert await echo.call({"n": n}) == {"argv": [], "stdin": {"n": n}}
        assert registry.get("echo").calls == 3
        await registry.aclose()
