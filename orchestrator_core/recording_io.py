"""Export a Run as a recording and import one (REC-7010..REC-7019, specs/95_recordings.md).

:func:`export_run` reads a Run of the caller's tenant through the :class:`Store` and
yields the lines of :mod:`orchestrator_core.recordings`, one at a time, in a deterministic
order with no time of export in them: exporting a Run twice gives the same bytes.

:func:`import_recording` stores a checked :class:`~orchestrator_core.recordings.Recording`
as a new ``record`` Run of the caller's tenant, in one transaction
(:meth:`Store.import_run`): the Run, its Steps and its Facts get new ids, so the same file
imported twice makes two Runs that never collide; every frame keeps its bytes, each Step
its recorded status, usage and provenance, and checkpoints keep their content address.
The rendered prompt texts the Steps' provenance names travel on their step lines and are
kept again on import, so an imported LLM Step answers ``GET /v1/steps/{id}/prompt``
(REC-7112).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import blake3
import msgspec

from contracts.errors import Conflict, InvalidParams
from contracts.recordings import RecordingImported
from contracts.runs import FsPolicy, RunMode
from contracts.steps import StepStatus
from orchestrator_core.canonical import canonical_json, flow_address, new_id, new_ordered_id
from orchestrator_core.clock import Clock
from orchestrator_core.lookup import get_run
from orchestrator_core.prompts import text_hash
from orchestrator_core.recording_checks import check_recording
from orchestrator_core.recordings import (
    FORMAT,
    CheckpointLine,
    FactLine,
    FlowLine,
    HeaderLine,
    Recording,
    RunInputs,
    StepLine,
    StepRecord,
    TrailerLine,
    encode_line,
)
from orchestrator_core.replay import frames_hash
from orchestrator_core.rows import CheckpointRow, EventRow, FactRow, FlowRow, RunRow, StepRow
from orchestrator_core.store_base import Store

__all__ = ["export_run", "import_recording"]

_enc = msgspec.json.Encoder()
_PROVENANCE_ENGINE = ("engine", "engine_version", "engine_build", "model_hash")
_PAGE = 1000


def _json(text: str | None) -> Any:
    return None if text is None else msgspec.json.decode(text)


def export_run(store: Store, run_id: str, tenant: str | None,
               server_version: str) -> Iterator[bytes]:
    """The lines of a Run's recording [REC-7010].

    The Run is looked up (and every refusal raised) before the first line is produced,
    so an HTTP layer can answer an error before it starts streaming.

    Args:
        store: the store.
        run_id: the Run.
        tenant: the caller's tenant (another tenant's Run answers like an unknown one);
            None is the server's own view.
        server_version: written in the header.

    Returns:
        An iterator of lines, each ending with ``\\n``.

    Raises:
        NotFound: no such Run in the tenant.
        Conflict: a Step of the Run has not finished (``data.field`` = ``status``).
    """
    get_run(store, run_id, tenant)
    run = store.get_run(run_id)
    assert run is not None
    steps = store.list_steps(run_id)
    for row in steps:
        if not StepStatus(row.status).terminal:
            raise Conflict(f"step {row.step_id} has not finished; a recording holds "
                           "finished steps only", data={"step_id": row.step_id,
                                                         "field": "status",
                                                         "status": row.status})
    return _lines(store, run, steps, server_version)


def _lines(store: Store, run: RunRow, steps: list[StepRow],
           server_version: str) -> Iterator[bytes]:
    root = blake3.blake3()
    flow = store.get_flow(run.flow_id)
    assert flow is not None
    provs = [p for p in (_json(s.provenance) for s in steps) if isinstance(p, dict)]
    engines = sorted({canonical_json({k: p.get(k) for k in _PROVENANCE_ENGINE})
                      for p in provs if p.get("engine") is not None})
    builds = {b: _json(store.engine_build(b)) for b in
              sorted({p["engine_build"] for p in provs if p.get("engine_build")})}
    header = HeaderLine(
        format=FORMAT, server_version=server_version,
        run=RunInputs(run_id=run.run_id, mode=run.mode, seed=run.seed,
                      replay_of=run.replay_of, policy_hash=run.policy_hash,
                      body=msgspec.json.decode(run.body), status=run.status,
                      created_at=run.created_at),
        engines=[msgspec.json.decode(e) for e in engines],
        engine_builds={k: v for k, v in builds.items() if v is not None},
        price_table_versions=sorted({str(p["price_table_version"]) for p in provs
                                     if "price_table_version" in p}))
    line = encode_line(header)
    root.update(line)
    yield line
    line = encode_line(FlowLine(
        flow_id=flow.flow_id, flow_hash=flow.hash,
        content={"ast_ir": _json(flow.ast_ir), "tools": _json(flow.tools),
                 "config": _json(flow.config)},
        labels=_json(flow.labels), created_at=flow.created_at))
    root.update(line)
    yield line
    n_frames = 0
    for ordinal, row in enumerate(steps):
        events = store.read_events(row.step_id, -1)
        n_frames += len(events)
        prov = _json(row.provenance)
        named = prov.get("rendered_hash") if isinstance(prov, dict) else None
        line = encode_line(StepLine(
            step=StepRecord(
                step_id=row.step_id, ordinal=ordinal, type=row.type,
                client_token=row.client_token, input=_json(row.input),
                input_hash=row.input_hash, placement=_json(row.placement),
                status=row.status, seed=row.seed, created_at=row.created_at,
                tokens_in=row.tokens_in, tokens_out=row.tokens_out, cost_usd=row.cost_usd,
                wall_ms=row.wall_ms, provenance=_json(row.provenance),
                error=_json(row.error)),
            frames=[(seq, ftype, data.decode()) for seq, ftype, data in events],
            frames_hash=frames_hash(events),
            rendered=store.prompt_text(named) if isinstance(named, str) else None))
        root.update(line)
        yield line
    n_facts = n_ckps = 0
    since = -1
    while page := store.list_facts(run_id=run.run_id, since_seq=since, limit=_PAGE):
        for fact in page:
            line = encode_line(FactLine(
                fact_id=fact.fact_id, seq=fact.seq, type=fact.type,
                schema_uri=fact.schema_uri, data=_json(fact.data),
                emitted_by_step=fact.emitted_by_step, ts=fact.ts))
            root.update(line)
            n_facts += 1
            yield line
        since = page[-1].seq
    after = 0
    while page2 := store.list_checkpoints(run.run_id, after=after, limit=_PAGE):
        for ckp in page2:
            line = encode_line(CheckpointLine(
                checkpoint_id=ckp.checkpoint_id, step_id=ckp.step_id,
                checkpoint_hash=ckp.hash, snapshot=_json(ckp.snapshot),
                cursor=_json(ckp.cursor), ts=ckp.ts))
            root.update(line)
            n_ckps += 1
            yield line
        position = store.checkpoint_position(run.run_id, page2[-1].checkpoint_id)
        assert position is not None
        after = position
    yield encode_line(TrailerLine(steps=len(steps), frames=n_frames, facts=n_facts,
                                  checkpoints=n_ckps, root_hash="b3:" + root.hexdigest()))


def _text(value: Any) -> str | None:
    return None if value is None else _enc.encode(value).decode()


def import_recording(store: Store, rec: Recording, tenant: str, default_tenant: str,
                     clock: Clock,
                     check_fs_policy: Callable[[FsPolicy], None]) -> RecordingImported:
    """Store a checked recording as a new ``record`` Run of ``tenant`` [REC-7011].

    The Run, each Step and each Fact get new ids (a Step id is time-ordered, like a
    submitted Step's); frames keep their bytes, Steps their recorded status, usage,
    provenance, seed and input hash, and the Run its seed, policy and body, so the Run is
    a valid ``replay_of`` target. The Flow is the tenant's Flow with the recorded content
    (created if it has none). A checkpoint keeps its id (its content address, named by the
    Steps' frames); one the server already holds is not stored again. The Steps'
    ``rendered`` texts are kept under their hashes (REC-7112). Nothing is stored unless
    everything is (one transaction).

    Args:
        store: the store.
        rec: a recording checked by :class:`~orchestrator_core.recordings.RecordingReader`.
        tenant: the importing tenant.
        default_tenant: the server's default tenant (for the flow_id).
        clock: for the new ids and the Flow's creation time.
        check_fs_policy: the importing tenant's check of the Run's ``fs_policy``.

    Raises:
        InvalidParams: the recording is of a Run that is not ``record`` mode (``data``
            ``{"line": 1, "field": "run.mode"}``), or a value the routes would have
            refused (:func:`~orchestrator_core.recording_checks.check_recording`).
    """
    run_in = rec.header.run
    if run_in.mode != RunMode.RECORD.value:
        raise InvalidParams("only a record run's recording can be imported; this one is "
                            f"a {run_in.mode} run", data={"line": 1, "field": "run.mode",
                                                          "mode": run_in.mode})
    check_recording(rec, check_fs_policy)
    content = rec.flow.content
    flow_hash, flow_id = flow_address(content, tenant, default_tenant)
    existing = store.get_flow_by_hash(tenant, flow_hash)
    flow_row = None
    if existing is not None:
        flow_id = existing.flow_id
        flow_hash = existing.hash
    else:
        flow_row = FlowRow(flow_id=flow_id, hash=flow_hash,
                           ast_ir=canonical_json(content["ast_ir"]).decode(),
                           tools=canonical_json(content["tools"]).decode(),
                           config=canonical_json(content["config"]).decode(),
                           labels=canonical_json(rec.flow.labels).decode(),
                           created_at=rec.flow.created_at, tenant=tenant)
    run_id = new_id("run")
    run_row = RunRow(run_id=run_id, flow_id=flow_id, flow_hash=flow_hash, mode=run_in.mode,
                     seed=run_in.seed, replay_of=None, body=_enc.encode(run_in.body).decode(),
                     policy_hash=run_in.policy_hash, status=run_in.status,
                     created_at=run_in.created_at, tenant=tenant)
    now = clock.now()
    ids = {line.step.step_id: new_ordered_id("stp", now) for line in rec.steps}
    steps: list[StepRow] = []
    events: list[EventRow] = []
    for line in rec.steps:
        s, step_id = line.step, ids[line.step.step_id]
        steps.append(StepRow(
            step_id=step_id, run_id=run_id, type=s.type, client_token=s.client_token,
            input=canonical_json(s.input).decode(), input_hash=s.input_hash,
            placement=_text(s.placement), status=s.status, seed=s.seed,
            created_at=s.created_at, tokens_in=s.tokens_in, tokens_out=s.tokens_out,
            cost_usd=s.cost_usd, wall_ms=s.wall_ms, provenance=_text(s.provenance),
            error=_text(s.error), last_seq=len(line.frames) - 1, ordinal=s.ordinal,
            frames_hash=line.frames_hash))
        events.extend((step_id, seq, run_id, ftype, data.encode())
                      for seq, ftype, data in line.frames)
    facts = [FactRow(fact_id=new_id("fct"), run_id=run_id, flow_id=flow_id, seq=f.seq,
                     type=f.type, schema_uri=f.schema_uri, data=canonical_json(f.data).decode(),
                     emitted_by_step=ids.get(f.emitted_by_step or ""), ts=f.ts)
             for f in rec.facts]
    checkpoints = [CheckpointRow(checkpoint_id=c.checkpoint_id, run_id=run_id,
                                 step_id=ids.get(c.step_id or ""), hash=c.checkpoint_hash,
                                 snapshot=canonical_json(c.snapshot).decode(),
                                 cursor=canonical_json(c.cursor).decode(), ts=c.ts)
                   for c in rec.checkpoints]
    builds = [(k, canonical_json(v).decode()) for k, v in rec.header.engine_builds.items()]
    texts = sorted({(text_hash(line.rendered), line.rendered) for line in rec.steps
                    if line.rendered is not None})
    store.import_run(flow=flow_row, run=run_row, steps=steps, events=events, facts=facts,
                     checkpoints=checkpoints, engine_builds=builds, prompt_texts=texts)
    return RecordingImported(run_id=run_id, flow_id=flow_id, steps=len(steps),
                       root_hash=rec.trailer.root_hash, recorded_run_id=run_in.run_id)
