"""Engine paths side by side: the engine in-process, the llama.cpp worker, the old server.

Each path generates the same completion (raw prompt, every sampling parameter, seed) at
two lengths, ``short`` and ``long`` tokens, alternating path by path and request by
request. A path's decode cost per token is ``(p50(long) - p50(short)) / (tokens(long) -
tokens(short))`` in ms, and its tokens/s the inverse; its fixed cost per step is
``p50(short)``. The paths:

* ``in-process``: ``Llama.reset()`` + ``Llama.generate`` in the bench process (the engine
  directly, the floor);
* ``worker``: ``POST /v1/generate`` to the replica the server started (PLACE-5003);
* ``old server``: ``POST /v1/completions`` (stream) to ``python -m llama_cpp.server``;
* ``old server + reset``: the same, after the one-token prefix-reset request the
  orchestrator used to send before every Step.
"""

from __future__ import annotations

import base64
import functools
import json
import pathlib
import statistics
import time
from collections.abc import Callable
from typing import Any

import httpx
import msgspec

from worker_adapters.base import CompletionRequest
from worker_adapters.llamacpp import llamacpp_settings
from worker_adapters.llamacpp_engine import generate_body
from worker_adapters.llamacpp_worker import open_llama
from worker_adapters.openai_http import completion_body

from .legacy import PREFIX_BREAKER, LegacyServer

__all__ = ["EnginePath", "EnginesReport", "measure_engines"]

PROMPT = "Once upon a time, in a small village by the sea, there lived"


class EnginePath(msgspec.Struct, frozen=True):
    """One path's figures (ms, tokens, tokens/s).

    Attributes:
        name: the path.
        short_p50_ms / long_p50_ms: median time of a short / long completion (ms).
        short_tokens / long_tokens: tokens each produced (text pieces for the old server).
        ms_per_token: decode cost of one more token (ms).
        tokens_per_s: ``1000 / ms_per_token``.
        overhead_ms_per_token: ``ms_per_token`` minus the in-process path's.
        step_overhead_ms: ``short_p50_ms`` minus the in-process path's.
    """

    name: str
    short_p50_ms: float
    long_p50_ms: float
    short_tokens: int
    long_tokens: int
    ms_per_token: float
    tokens_per_s: float
    overhead_ms_per_token: float = 0.0
    step_overhead_ms: float = 0.0


class EnginesReport(msgspec.Struct, frozen=True):
    """Result of :func:`measure_engines`.

    Attributes:
        short / long: the two completion lengths (tokens).
        requests: requests per path and length.
        paths: one row per path, in-process first.
        worker_equals_engine: the worker's token ids equal the in-process engine's.
        old_server_text_equal: the old server's text equals the worker's bytes decoded.
    """

    short: int
    long: int
    requests: int
    paths: list[EnginePath]
    worker_equals_engine: bool
    old_server_text_equal: bool


def _request(n: int) -> CompletionRequest:
    return CompletionRequest(prompt=PROMPT, seed=1234, temperature=0.0, top_k=40, top_p=0.95,
                             min_p=0.05, repeat_penalty=1.0, max_tokens=n)


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter_ns()
    out = fn()
    return (time.perf_counter_ns() - t0) / 1e6, out


class _InProcess:
    def __init__(self, model_path: pathlib.Path) -> None:
        import llama_cpp

        self.lib = llama_cpp
        self.llm = open_llama(str(model_path), llamacpp_settings({}, 2048))

    def __call__(self, n: int) -> list[int]:
        llm, req = self.llm, _request(n)
        tokens = llm.tokenize(PROMPT.encode(), add_bos=True, special=True)
        llm.reset()
        llm.set_seed(req.seed)
        ids: list[int] = []
        gen = llm.generate(tokens, top_k=req.top_k, top_p=req.top_p, min_p=req.min_p,
                           typical_p=1.0, temp=req.temperature,
                           repeat_penalty=req.repeat_penalty)
        for token in gen:
            if self.lib.llama_vocab_is_eog(llm._model.vocab, token):
                break
            ids.append(token)
            if len(ids) >= n:
                break
        gen.close()
        return ids


def _worker(http: httpx.Client, n: int) -> list[tuple[int, bytes]]:
    out = []
    with http.stream("POST", "/v1/generate", json=generate_body(_request(n))) as resp:
        for line in resp.iter_lines():
            item = json.loads(line)
            if "id" in item:
                out.append((item["id"], base64.b64decode(item["b"])))
    return out


def _old(http: httpx.Client, n: int, reset: bool) -> list[str]:
    if reset:
        http.post("/v1/completions", json=PREFIX_BREAKER)
    pieces = []
    with http.stream("POST", "/v1/completions",
                     json=completion_body(_request(n))) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                text = json.loads(line[6:])["choices"][0]["text"]
                if text:
                    pieces.append(text)
    return pieces


def measure_engines(worker_url: str, model_path: pathlib.Path, work_dir: pathlib.Path, *,
                    short: int = 8, long: int = 64, requests: int = 15) -> EnginesReport:
    """Measure every path; one warm-up request per path and length is not counted.

    Args:
        worker_url: a llama.cpp worker replica (the one the server under test started).
        model_path: the GGUF the worker serves.
        work_dir: where the old server's log goes.
        short / long: the two completion lengths (tokens).
        requests: timed requests per path and length.
    """
    inproc = _InProcess(model_path)
    with LegacyServer(model_path, work_dir / "llama_cpp_server.log") as old, \
            httpx.Client(base_url=worker_url, timeout=120.0) as w, \
            httpx.Client(base_url=old.url, timeout=120.0) as o:
        paths: dict[str, Callable[[int], Any]] = {
            "in-process": inproc, "worker": lambda n: _worker(w, n),
            "old server": lambda n: _old(o, n, False),
            "old server + reset": lambda n: _old(o, n, True)}
        times: dict[tuple[str, int], list[float]] = {}
        outs: dict[tuple[str, int], Any] = {}
        for n in (short, long):
            for name, fn in paths.items():
                outs[name, n] = fn(n)
            for _ in range(requests):
                for name, fn in paths.items():
                    ms, _out = _timed(functools.partial(fn, n))
                    times.setdefault((name, n), []).append(ms)
    base: EnginePath | None = None
    rows = []
    for name in paths:
        s_ms = statistics.median(times[name, short])
        l_ms = statistics.median(times[name, long])
        s_n, l_n = len(outs[name, short]), len(outs[name, long])
        per = (l_ms - s_ms) / max(1, l_n - s_n)
        row = EnginePath(name=name, short_p50_ms=round(s_ms, 3), long_p50_ms=round(l_ms, 3),
                         short_tokens=s_n, long_tokens=l_n, ms_per_token=round(per, 3),
                         tokens_per_s=round(1000 / per, 1) if per > 0 else 0.0)
        if base is None:
            base = row
        else:
            row = msgspec.structs.replace(
                row, overhead_ms_per_token=round(per - base.ms_per_token, 3),
                step_overhead_ms=round(s_ms - base.short_p50_ms, 3))
        rows.append(row)
    worker_long = outs["worker", long]
    text = b"".join(d for _i, d in worker_long).decode("utf-8", "replace")
    return EnginesReport(
        short=short, long=long, requests=requests, paths=rows,
        worker_equals_engine=[i for i, _d in worker_long] == outs["in-process", long],
        old_server_text_equal="".join(outs["old server", long]) == text)
