"""Fuzz every operation of the served OpenAPI document against a real server.

A mock-engine ``orchestratord serve`` process (Granian, loopback) serves
``/schema/openapi.json``; schemathesis turns each operation into a hypothesis strategy
of positive and negative requests, with path ids either fuzzed or taken from a Flow,
three Runs (record, replay, strict_replay) and a finished Step created up front, so
bodies also reach the domain code behind a known id. The document does not say that the
bodies reject unknown fields (msgspec ``forbid_unknown_fields``), so most positive
bodies are refused with 400 before any domain code runs. Half the cases of the three
body operations are therefore contract-conforming: positive bodies without the fields the
msgspec contract does not know, naming the served model and, half of those, with a fresh
client_token and in-range sampling parameters, so that Steps are really executed with
fuzzed inputs. Every response is checked:

* no status 500 (a 500 is always a bug; the server-log lines the request produced are
  attached to the report);
* every answer is documented for its operation: its status, media type, headers and
  body match the served document (schemathesis' conformance checks, NERVE-4033);
* every 3xx/4xx/5xx answer is the error envelope ``{code, message, retriable,
  retry_after_ms?, data?}`` with a 4xx/5xx status;
* every request gets an answer: no dropped connection, no hang (an SSE stream is read
  for at most the request timeout, which schemathesis reports as cut short, not as an
  error);
* the server logs no traceback, including from Steps that fail in the background after
  their submission was answered.

``FUZZ_CASES`` (default 200) is the total number of requests, spread evenly over the
operations; what an operation cannot use (``GET /health`` has a single distinct request)
goes to the ones after it. Generation is derandomized and keeps no example database, so
a run is reproducible and leaves nothing in the repository.
"""

from __future__ import annotations

import itertools
import pathlib
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec.inspect as mi
import pytest
import requests
import schemathesis
from hypothesis import given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import FailureGroup

from contracts.flows import FlowCreate
from contracts.runs import RunCreate
from contracts.steps import StepSubmit
from orchestrator_core.config import mock_config
from test_harness.fuzz.common import (
    FUZZ_CASES,
    FUZZ_SETTINGS,
    envelope_problem,
    exception_line,
    log_since,
    openai_error_problem,
    settled_size,
    shown,
    stray_tracebacks,
)
from test_harness.support import MOCK_MODEL, http_run_step, llm_step, server_process


@schemathesis.serializer("application/x-ndjson")
def _ndjson(ctx: Any, value: Any) -> bytes:
    """A recording body (REC-7011): a generated string as it is, anything else as its
    ``repr``; the server refuses what is not a recording with a 400 naming the line."""
    return (value if isinstance(value, str) else repr(value)).encode("utf-8", "replace")


SLOW_S = 1.0
"""No request may take longer than this to answer (its response head, for a stream)."""

REQUEST_TIMEOUT_S = 10.0
"""Per request; for an SSE stream, the total time it is read before being cut short."""

_LAST = ("POST /v1/runs/{run_id}/cancel", "POST /v1/steps/{step_id}/cancel")
"""Run last, so the known Runs still accept Steps while the other operations are fuzzed."""
_CONTRACTS: dict[str, Any] = {
    "POST /v1/flows": FlowCreate,
    "POST /v1/flows/{flow_id}/runs": RunCreate,
    "POST /v1/runs/{run_id}/steps": StepSubmit,
}
"""The msgspec type behind each request body, for the contract-conforming cases."""
_SAMPLING_RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "max_tokens": (1, 4096, False), "temperature": (0, None, False), "top_k": (0, None, False),
    "top_p": (0, 1, True), "min_p": (0, 1, False), "repeat_penalty": (0, None, True),
}
"""``(low, high, low excluded)`` of the sampling parameters the server accepts."""
_CONFORMANCE = [status_code_conformance, content_type_conformance,
                response_headers_conformance, response_schema_conformance]
"""Every answer's status, media type, headers and body are the ones its operation
documents, errors included (NERVE-4033)."""
_FRESH = itertools.count()
"""Suffixes that make a repaired client_token new, so its Step is created."""

@dataclass
class Server:
    """The fuzzed server: its URL, process, log and the ids that exist on it."""

    url: str
    proc: subprocess.Popen[bytes]
    log: pathlib.Path
    known: dict[str, list[str]]


@dataclass
class Report:
    """What the fuzzing saw."""

    cases: Counter[str] = field(default_factory=Counter)
    statuses: dict[str, Counter[int]] = field(default_factory=dict)
    cut_streams: int = 0
    failures: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    attributed: list[tuple[int, int]] = field(default_factory=list)
    """Server-log byte ranges already shown with a 500."""

    def fail(self, kind: str, label: str, key: str, detail: str) -> None:
        """Record a failure; failures with the same kind, operation and key are grouped."""
        self.failures.setdefault((f"{kind} {label}", key), []).append(detail)

    def render(self) -> str:
        """One block per distinct failure: the first example in full and the count."""
        blocks = []
        for (what, key), details in sorted(self.failures.items()):
            blocks.append(f"=== {what} [{key}] x{len(details)}\n{details[0]}")
        return "\n\n".join(blocks)


def _seed(url: str) -> dict[str, list[str]]:
    """Create a Flow, three Runs and a finished Step; return the ids by path-parameter name."""
    with httpx.Client(base_url=url, timeout=30.0) as http:
        flow = http.post("/v1/flows", json={"ast_ir": {"suite": "fuzz"}})
        assert flow.status_code == 201, flow.text
        flow_id, flow_hash = flow.json()["flow_id"], flow.json()["hash"]
        rec = http.post(f"/v1/flows/{flow_id}/runs", json={"mode": "record", "seed": 7})
        assert rec.status_code == 201, rec.text
        run_id = rec.json()["run_id"]
        step, frames = http_run_step(http, run_id, llm_step("fuzz-seed"))
        assert frames and frames[-1]["event"] == "end", step.text
        runs = [run_id]
        for mode in ("replay", "strict_replay"):
            run = http.post(f"/v1/flows/{flow_id}/runs", json={"mode": mode, "replay_of": run_id})
            assert run.status_code == 201, run.text
            runs.append(run.json()["run_id"])
        pools = [p["pool_id"] for p in http.get("/v1/pools").json()]
    return {"flow_id": [flow_id], "flow_hash": [flow_hash], "run_id": runs,
            "step_id": [step.json()["step_id"]], "pool_id": pools}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real mock-engine server on loopback, with a few existing resources."""
    data = tmp_path_factory.mktemp("fuzz-server")
    with server_process(mock_config(data_dir=str(data)), data) as (proc, url):
        yield Server(url=url, proc=proc, log=data / "server.log", known=_seed(url))


def _known_fields(value: Any, info: mi.Type) -> Any:
    """``value`` without the object keys the msgspec type ``info`` does not declare."""
    if isinstance(info, mi.UnionType):
        # A tagged member whose tag the value names, else the first member of its shape.
        tagged = [m for m in info.types if isinstance(m, mi.StructType) and m.tag_field
                  and isinstance(value, dict) and value.get(m.tag_field) == m.tag]
        for member in [*tagged, *info.types]:
            if ((isinstance(value, dict) and isinstance(member, mi.StructType | mi.DictType))
                    or (isinstance(value, list) and isinstance(member, mi.ListType))):
                return _known_fields(value, member)
        return value
    if isinstance(info, mi.StructType) and isinstance(value, dict):
        fields = {f.encode_name: f.type for f in info.fields}
        out = {k: _known_fields(v, fields[k]) for k, v in value.items() if k in fields}
        if info.tag_field is not None and info.tag_field in value:
            out[info.tag_field] = value[info.tag_field]
        return out
    if isinstance(info, mi.DictType) and isinstance(value, dict):
        return {k: _known_fields(v, info.value_type) for k, v in value.items()}
    if isinstance(info, mi.ListType) and isinstance(value, list):
        return [_known_fields(v, info.item_type) for v in value]
    return value


def _in_range(name: str, value: Any) -> bool:
    """Whether a sampling parameter is one the server accepts (else it answers 400)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return name not in _SAMPLING_RANGES
    low, high, open_low = _SAMPLING_RANGES.get(name, (None, None, False))
    return ((low is None or value > low or (value == low and not open_low))
            and (high is None or value <= high))


def _conform(case: Case[Any], contract: Any, known: dict[str, list[str]],
             repair: bool) -> Case[Any]:
    """Make a positive body acceptable past decoding: known fields only, the served model,
    a recorded Run to replay. With ``repair``, also a fresh client_token and only
    in-range sampling parameters, so that the Step is really executed."""
    if not isinstance(case.body, dict):
        return case
    body = _known_fields(case.body, mi.type_info(contract))
    llm_input = body.get("input")
    if contract is StepSubmit and isinstance(llm_input, dict):
        llm_input["model"] = MOCK_MODEL
        if llm_input.get("prompt") is not None:
            llm_input.pop("messages", None)
        elif llm_input.get("messages") is None:
            llm_input["prompt"] = "fuzz"
        params = llm_input.get("params")
        if repair and isinstance(params, dict):
            llm_input["params"] = {k: v for k, v in params.items() if _in_range(k, v)}
        if repair and isinstance(body.get("client_token"), str):
            body["client_token"] += f"#{next(_FRESH)}"
    if contract is RunCreate:
        if body.get("mode") in ("replay", "strict_replay"):
            body["replay_of"] = known["run_id"][0]
        else:
            body.pop("replay_of", None)
    case.body = body
    return case


def _strategy(op: Any, known: dict[str, list[str]]) -> st.SearchStrategy[Case[Any]]:
    """Positive and negative cases with fuzzed path ids and, when they exist, known ones;
    for an operation with a contract body, half the cases are contract-conforming ones
    (behind known ids only: behind a fuzzed id they would all be 404)."""
    names = [p.name for p in op.path_parameters]
    contract = _CONTRACTS.get(f"{op.method.upper()} {op.path}")
    known_paths: list[dict[str, str] | None] = []
    if names and all(n in known for n in names):
        known_paths = [dict(zip(names, values, strict=True))
                       for values in itertools.product(*(known[n] for n in names))]
    plain = st.one_of([op.as_strategy(generation_mode=mode, path_parameters=path)
                       for path in [None, *known_paths]
                       for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)])
    if contract is None:
        return plain
    conforming = st.one_of([
        st.tuples(op.as_strategy(generation_mode=GenerationMode.POSITIVE,
                                 path_parameters=path), st.booleans()).map(
            lambda drawn: _conform(drawn[0], contract, known, repair=drawn[1]))
        for path in (known_paths if names else [None])])
    return st.sampled_from([plain, conforming]).flatmap(lambda strategy: strategy)


def _exercise(case: Case[Any], label: str, server: Server, session: requests.Session,
              report: Report) -> None:
    """Send one case and record what is wrong with the answer."""
    report.cases[label] += 1
    offset = server.log.stat().st_size
    request = f"{case.method.upper()} {case.formatted_path}"
    try:
        resp = case.call(base_url=server.url, session=session, timeout=REQUEST_TIMEOUT_S)
    except requests.RequestException as exc:
        alive = server.proc.poll() is None
        report.fail("NO RESPONSE", label, type(exc).__name__,
                    f"{request}\nreproduce: {case.as_curl_command(base_url=server.url)}"
                    f"\nerror: {exc!r}\nserver alive: {alive}\n"
                    f"server log:\n{log_since(server.log, offset)}")
        return
    report.statuses.setdefault(label, Counter())[resp.status_code] += 1
    report.cut_streams += resp.stream_cut_short
    if resp.elapsed > SLOW_S:  # time to the response head, streams too
        report.fail("SLOW", label, f"over {SLOW_S} s",
                    f"{request} answered in {resp.elapsed:.2f} s\n"
                    f"reproduce: {case.as_curl_command(base_url=server.url)}")
    try:
        case.validate_response(resp, checks=_CONFORMANCE)
    except FailureGroup as group:
        for failure in group.exceptions:
            report.fail("NOT AS DOCUMENTED", label, failure.title,
                        f"{request} -> {resp.status_code}\n{failure}\n"
                        f"response body: {shown(resp.content)}\n"
                        f"reproduce: {case.as_curl_command(base_url=server.url)}")
    if 200 <= resp.status_code < 300:
        return
    sent = (f"{resp.request.method} {resp.request.url}\n"
            f"request body: {shown(resp.request.body)}\n"
            f"status: {resp.status_code}\nresponse body: {shown(resp.content)}")
    if resp.status_code == 500:
        end = settled_size(server.log, offset)
        log_text = log_since(server.log, offset)
        report.attributed.append((offset, end))
        report.fail("500", label, exception_line(log_text), f"{sent}\nserver log:\n{log_text}")
    content_type = (resp.headers.get("content-type") or [""])[0]
    check = openai_error_problem if "/openai/v1/" in label else envelope_problem
    problem = check(resp.status_code, content_type, resp.content)
    if problem is not None:
        report.fail("NOT AN ENVELOPE", label, problem, sent)


def _fuzz_operation(op: Any, strategy: st.SearchStrategy[Case[Any]], budget: int, server: Server,
                    session: requests.Session, report: Report) -> None:
    label = f"{op.method.upper()} {op.path}"

    @settings(FUZZ_SETTINGS, max_examples=budget)
    @given(case=strategy)
    def fuzz(case: Case[Any]) -> None:
        _exercise(case, label, server, session, report)

    fuzz()


@pytest.mark.usefixtures("hypothesis_home")
def test_fuzz_served_openapi(server: Server) -> None:
    """No 500, every answer as documented, every error an envelope, every request answered
    within 1 s, over FUZZ_CASES requests."""
    schema = schemathesis.openapi.from_url(f"{server.url}/schema/openapi.json")
    ops = [op for path in schema for op in schema[path].values()]
    assert ops, "the served document has no operations"
    # Operations without parameters exhaust after a request or two; their unused budget
    # goes to the later ones. Cancellations go last so the known Runs stay usable.
    ops.sort(key=lambda op: (f"{op.method.upper()} {op.path}" in _LAST,
                             bool(op.path_parameters or op.query or op.headers or op.body)))
    report = Report()
    with requests.Session() as session:
        for index, op in enumerate(ops):
            left = FUZZ_CASES - sum(report.cases.values())
            budget = max(1, left // (len(ops) - index))
            _fuzz_operation(op, _strategy(op, server.known), budget, server, session, report)
    print(f"\nfuzzed {sum(report.cases.values())} requests over {len(ops)} operations "
          f"({report.cut_streams} SSE streams cut short at the timeout or event limit)")
    for label, count in sorted(report.cases.items()):
        statuses = dict(sorted(report.statuses.get(label, Counter()).items()))
        print(f"  {count:5d}  {label:34s} {statuses}")
    for block in stray_tracebacks(server.log, report.attributed):
        report.fail("SERVER TRACEBACK", "-", exception_line(block), block)
    if server.proc.poll() is not None:
        report.fail("SERVER EXITED", "-", str(server.proc.returncode),
                    log_since(server.log, 0)[-4000:])
    if report.failures:
        pytest.fail(f"fuzzing found {len(report.failures)} distinct problems:\n\n"
                    f"{report.render()}", pytrace=False)
