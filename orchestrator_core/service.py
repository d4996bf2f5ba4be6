"""The orchestrator: Flows, Runs, Steps and their streams, with no HTTP in sight.

:meth:`Orchestrator.running` is the lifecycle: it opens the store, recovers Steps a
crash left unfinished (each gets an ``INTERRUPTED`` error frame), provisions the pools,
and runs the group-commit flusher, the pool watcher and every Step task in one task
group. Leaving the context stops the engines and closes the store.
"""

from __future__ import annotations

import contextlib
import math
import pathlib
import secrets
from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgspec

from contracts.errors import (
    AdmissionReject,
    Conflict,
    ContextBudget,
    DeterminismInputsDiffer,
    Interrupted,
    InvalidParams,
    NotFound,
    QueueFull,
)
from contracts.events import Provenance, frame_type_of
from contracts.flows import Flow, FlowCreate
from contracts.pools import Capabilities, ModelCapability, PoolInfo
from contracts.runs import PlacementPin, Policy, Run, RunCreate, RunMode, RunStatus
from contracts.steps import (
    CheckpointSubmit,
    FsOpSubmit,
    GateEvalSubmit,
    LlmCallSubmit,
    LlmPlanSubmit,
    Step,
    StepStatus,
    StepSubmit,
    ToolCallSubmit,
)
from orchestrator_core import views
from orchestrator_core.budgets import BudgetBook
from orchestrator_core.canonical import (
    b3,
    b3_as_recorded,
    canonical_json,
    derive_seed,
    flow_address,
    new_id,
)
from orchestrator_core.checkpoints import Checkpoints
from orchestrator_core.clock import Clock, SystemClock, iso_utc
from orchestrator_core.config import ServerConfig
from orchestrator_core.effects import Effects, check_tool_schemas
from orchestrator_core.eventlog import EventLog
from orchestrator_core.executor import Executor, LlmJob, ReplayJob
from orchestrator_core.facts import Facts, check_fact_schemas
from orchestrator_core.metrics import Metrics
from orchestrator_core.placement import place
from orchestrator_core.planning import (
    ContractShape,
    OutputShape,
    PlanShape,
    check_contract_schema,
    intents_schema,
    menu_text,
    tool_menu,
)
from orchestrator_core.policy import check_allowed, redact, validate_policy
from orchestrator_core.pools import PoolManager
from orchestrator_core.replay import (
    TokenVerifier,
    check_determinism_inputs,
    check_recorded_match,
    recorded_params,
    same_build,
)
from orchestrator_core.rows import FlowRow, RunRow, StepRow
from orchestrator_core.store import SqliteStore
from orchestrator_core.store_base import Store
from orchestrator_core.streams import StepStream
from worker_adapters.base import CompletionRequest, Drivers, ToolExecutors, ToolsFactory

__all__ = ["DEFAULT_TENANT", "SERVER_VERSION", "Orchestrator"]

SERVER_VERSION = "orchestratord 0.1.0"
DEFAULT_TENANT = "default"
"""The tenant of every request when the server has no bearer tokens configured."""
_enc = msgspec.json.Encoder()
_prov_decoder = msgspec.json.Decoder(Provenance)


def _redacted_input(run_row: RunRow, input_value: Any) -> Any:
    """The Step input as stored: prompt and message contents redacted by the Run's policy
    (the input hash stays that of the submitted input, for idempotency and replay)."""
    policy = msgspec.json.decode(run_row.body, type=_PolicyOnly).policy
    if not policy.redact or not isinstance(input_value, dict):
        return input_value
    out = dict(input_value)
    if isinstance(out.get("prompt"), str):
        (out["prompt"],), _n = redact(policy, [out["prompt"]])
    if isinstance(out.get("messages"), list):
        texts, _n = redact(policy, [m["content"] for m in out["messages"]])
        out["messages"] = [{**m, "content": t} for m, t in zip(out["messages"], texts,
                                                               strict=True)]
    return out


_STEP_TYPES: dict[type, str] = {LlmCallSubmit: "llm_call", LlmPlanSubmit: "llm_plan",
                                ToolCallSubmit: "tool_call",
                                FsOpSubmit: "fs_op", GateEvalSubmit: "gate_eval",
                                CheckpointSubmit: "checkpoint"}
EFFECT_STEP_TYPES = frozenset({"tool_call", "fs_op"})


class _PolicyOnly(msgspec.Struct):
    policy: Policy


class Orchestrator:
    """The domain service behind every HTTP route.

    Args:
        config: operator config.
        store: the store (typed as the :class:`Store` protocol; PLACE-5008).
        pools: the pool manager (provisioned by :meth:`running`).
        clock: injected time.
        metrics: Prometheus metrics.
        tools: the operator's tool executors (injected, PLACE-5006).
    """

    def __init__(self, config: ServerConfig, store: Store, pools: PoolManager,
                 clock: Clock, metrics: Metrics, tools: ToolExecutors) -> None:
        self.config = config
        self.store = store
        self.pools = pools
        self.clock = clock
        self.metrics = metrics
        self.log = EventLog(store, clock, metrics,
                            commit_interval_s=config.commit_interval_ms / 1000.0,
                            commit_max_frames=config.commit_max_frames,
                            ephemeral_capacity=config.ephemeral_buffer)
        self.budgets = BudgetBook(config.prices)
        self.executor = Executor(self.log, clock, config.prices, metrics, self.budgets,
                                 max_recorded_value_bytes=config.max_recorded_value_bytes)
        self.effects = Effects(self, tools)
        self.facts = Facts(self)
        self.checkpoints = Checkpoints(self)
        self._tg: anyio.abc.TaskGroup | None = None
        self._departures: dict[str, object] = {}  # step id -> its last reader's departure

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, config: ServerConfig, *, drivers: Drivers, tools: ToolsFactory,
                      clock: Clock | None = None, metrics: Metrics | None = None,
                      store: Store | None = None) -> AsyncIterator[Orchestrator]:
        """Open the store, recover, start pools and background tasks; stop all on exit.

        Args:
            config: the operator config.
            drivers: engine name -> driver that provisions its pools (PLACE-5006); the
                core names no engine.
            tools: builds the tool executors from ``config.tools`` (PLACE-5006).
            clock: injected time (default: the system clock).
            metrics: Prometheus metrics (default: a fresh registry).
            store: the store (default: a :class:`SqliteStore` at
                ``<data_dir>/orchestrator.db``, migrated when opened); it is closed on
                exit either way (PLACE-5008).
        """
        data_dir = pathlib.Path(config.data_dir)
        if store is None:
            store = SqliteStore(data_dir / "orchestrator.db", config.sqlite_synchronous)
        clock = clock or SystemClock()
        pools = PoolManager(config, data_dir, drivers, clock)
        executors = tools(config.tools)
        orch = cls(config, store, pools, clock, metrics or Metrics(), executors)
        try:
            orch.recover()
            await pools.start()
            for pool in pools.pools.values():
                ident = pool.identity
                store.record_engine_build(ident.build_fingerprint,
                                          canonical_json(ident.settings).decode())
            async with anyio.create_task_group() as tg:
                orch._tg = tg
                tg.start_soon(orch.log.run_flusher)
                tg.start_soon(pools.watch)
                try:
                    yield orch
                finally:
                    tg.cancel_scope.cancel()
        finally:
            orch._tg = None
            await pools.stop()
            await executors.aclose()
            orch.log.flush()
            store.close()

    # -- recovery ----------------------------------------------------------------------

    def recover(self) -> int:
        """Close every Step a crash left ``queued``/``running`` with an ``INTERRUPTED``
        error frame, appended right after its last committed frame (no gaps), and remove
        the FS broker's leftover temporary files from every sandbox (POLICY-3012).

        Returns:
            How many Steps were interrupted.
        """
        self.effects.sweep_temp_files()
        rows = self.store.unfinished_steps()
        for row in rows:
            step_id = row.step_id
            seq = self.store.max_seq(step_id) + 1
            tokens = sum(1 for _s, t, _d in self.store.read_events(step_id, -1) if t == "token")
            env = Interrupted("the server restarted while this step ran",
                              data={"step_id": step_id}).envelope()
            body = _enc.encode(env)
            self.store.commit_events(
                [(step_id, seq, row.run_id, frame_type_of(env).value, body)],
                [(step_id, {"status": StepStatus.INTERRUPTED.value, "last_seq": seq,
                            "error": body.decode(), "tokens_out": tokens})])
        return len(rows)

    # -- flows -------------------------------------------------------------------------

    def create_flow(self, body: FlowCreate, tenant: str = DEFAULT_TENANT) -> tuple[Flow, bool]:
        """Store a Flow under its content address, within the tenant (NERVE-4001).

        The default tenant's flow_id is ``flw_`` + the first 32 hex digits of the hash;
        another tenant's also folds the tenant in, so ids never reveal another tenant's
        flows.

        Returns:
            ``(flow, created)``; ``created`` is False when the same content existed.

        Raises:
            InvalidParams: non-finite numbers, or duplicate tool names.
        """
        names = [t.name for t in body.tools]
        if len(set(names)) != len(names):
            raise InvalidParams("tool names must be unique within a flow",
                                data={"tools": names})
        for i, tool in enumerate(body.tools):
            check_tool_schemas(tool, i)
        check_fact_schemas(body.config)
        content = {"ast_ir": body.ast_ir, "tools": body.tools, "config": body.config}
        flow_hash, flow_id = flow_address(content, tenant, DEFAULT_TENANT)
        created = self.store.insert_flow(FlowRow(
            tenant=tenant,
            flow_id=flow_id, hash=flow_hash,
            ast_ir=canonical_json(body.ast_ir).decode(),
            tools=canonical_json(body.tools).decode(),
            config=canonical_json(body.config).decode(),
            labels=canonical_json(body.labels).decode(),
            created_at=iso_utc(self.clock.now()),
        ))
        row = self.store.get_flow_by_hash(tenant, flow_hash)  # a migrated Flow keeps its id
        assert row is not None
        return views.flow(row), created

    def get_flow(self, flow_id: str, tenant: str | None = DEFAULT_TENANT) -> Flow:
        """The tenant's Flow. Raises NotFound (also for another tenant's flow).
        ``tenant=None`` is the server's own, unscoped view."""
        row = self.store.get_flow(flow_id)
        if row is None or (tenant is not None and row.tenant != tenant):
            raise NotFound(f"no flow {flow_id}", data={"flow_id": flow_id})
        return views.flow(row)

    def get_flow_by_hash(self, flow_hash: str, tenant: str = DEFAULT_TENANT) -> Flow:
        """Look a tenant's Flow up by ``b3:<hex>``. Raises NotFound."""
        row = self.store.get_flow_by_hash(tenant, flow_hash)
        if row is None:
            raise NotFound(f"no flow with hash {flow_hash}", data={"hash": flow_hash})
        return views.flow(row)

    # -- runs --------------------------------------------------------------------------

    def create_run(self, flow_id: str, body: RunCreate, tenant: str = DEFAULT_TENANT) -> Run:
        """Create a Run (NERVE-4002). Replays name their recording with ``replay_of``.

        A record Run's missing sandbox roots are created only once every other check
        has passed, right before the Run is stored (POLICY-3011).

        Raises:
            NotFound: no such flow, or no such recorded run.
            InvalidParams: ``replay_of`` missing/forbidden, or the recording is not a
                ``record`` run of this flow.
            FsPolicyViolation: a sandbox root outside the tenant's own directories.
            DeterminismInputsDiffer: a replay asks for another seed or policy.
        """
        flow = self.get_flow(flow_id, tenant)
        seed = body.seed
        validate_policy(body.policy)
        if body.fs_policy.roots:
            self.effects.validate_fs_policy(body.fs_policy, tenant)
        policy_hash = b3(body.policy)
        fork = None
        if body.from_checkpoint is not None:
            if body.mode is not RunMode.RECORD:
                raise InvalidParams("from_checkpoint forks a record run; replay the fork's "
                                    "recording with replay_of instead")
            fork = self.checkpoints.fork_source(body.from_checkpoint, flow.flow_id, tenant)
            parent = self.store.get_run(fork.run_id)
            assert parent is not None
            seed = parent.seed if seed is None else seed
        if body.mode is RunMode.RECORD:
            if body.replay_of is not None:
                raise InvalidParams("replay_of is only for replay and strict_replay runs")
        else:
            if body.replay_of is None:
                raise InvalidParams(f"mode {body.mode.value} needs replay_of: <run_id>")
            src = self.store.get_run(body.replay_of)
            if src is None or src.tenant != tenant:
                raise NotFound(f"no run {body.replay_of}", data={"run_id": body.replay_of})
            if src.mode != RunMode.RECORD.value or src.flow_id != flow.flow_id:
                raise InvalidParams("replay_of must name a record-mode run of the same flow",
                                    data={"replay_of": body.replay_of,
                                          "recorded_flow_id": src.flow_id,
                                          "recorded_mode": src.mode})
            diff: dict[str, dict[str, Any]] = {}
            policy_hash = b3_as_recorded(body.policy, policy_hash, src.policy_hash)
            if seed is not None and seed != src.seed:
                diff["seed"] = {"recorded": src.seed, "current": seed}
            if body.mode is RunMode.STRICT_REPLAY and policy_hash != src.policy_hash:
                diff["policy_hash"] = {"recorded": src.policy_hash, "current": policy_hash}
            if diff:
                raise DeterminismInputsDiffer(
                    "replay refused: determinism inputs differ: " + ", ".join(sorted(diff)),
                    fields=diff)
            seed = src.seed
        if seed is None:
            seed = secrets.randbelow(2**31)
        if not 0 <= seed < 2**63:
            raise InvalidParams("seed must be in [0, 2**63)", data={"seed": seed})
        run_id = new_id("run")
        created = (self.effects.create_roots(body.fs_policy, tenant)
                   if body.fs_policy.roots and body.mode is RunMode.RECORD else [])
        try:
            self.store.insert_run(RunRow(
                run_id=run_id, flow_id=flow.flow_id, flow_hash=flow.hash,
                mode=body.mode.value, seed=seed, replay_of=body.replay_of,
                body=_enc.encode({"budgets": body.budgets, "policy": body.policy,
                                  "pool_policy": body.pool_policy,
                                  "fs_policy": body.fs_policy,
                                  "labels": body.labels,
                                  "cancel_on_disconnect": body.cancel_on_disconnect,
                                  }).decode(),
                policy_hash=policy_hash, status=RunStatus.ACTIVE.value,
                created_at=iso_utc(self.clock.now()), tenant=tenant,
            ))
        except BaseException:
            self.effects.discard_roots(created)
            raise
        if fork is not None:
            self.checkpoints.inherit(run_id, fork)
        return self.get_run(run_id, tenant)

    def get_run(self, run_id: str, tenant: str | None = DEFAULT_TENANT) -> Run:
        """The Run with its usage and Step counts. Raises NotFound (also for another
        tenant's run). ``tenant=None`` is the server's own, unscoped view."""
        row = self.store.get_run(run_id)
        if row is None or (tenant is not None and row.tenant != tenant):
            raise NotFound(f"no run {run_id}", data={"run_id": run_id})
        return views.run(row, self.store.run_usage(run_id), self.store.child_runs(run_id))

    def cancel_run(self, run_id: str, tenant: str = DEFAULT_TENANT) -> Run:
        """Refuse new Steps and cancel the Run's in-flight ones; idempotent."""
        self.get_run(run_id, tenant)
        self.store.set_run_status(run_id, RunStatus.CANCELLED.value)
        for row in self.store.list_steps(run_id):
            self.executor.cancel(row.step_id, reason="run cancelled")
        return self.get_run(run_id, tenant)

    # -- steps -------------------------------------------------------------------------

    def submit_step(self, run_id: str, body: StepSubmit,
                    tenant: str = DEFAULT_TENANT) -> tuple[Step, bool]:
        """Accept a Step, idempotently by ``client_token`` (NERVE-4003).

        Everything that can refuse the Step is checked before anything is stored: policy,
        model, context, placement, queue capacity and, for replays, the recording.

        Returns:
            ``(step, created)``; ``created`` is False for a repeated client_token.

        Raises:
            NotFound, Conflict (token reused with another input, or the run is
            cancelled), InvalidParams, InvalidModel, ContextBudget, PolicyDenied,
            Nondeterminism, DeterminismInputsDiffer, PoolUnavailable, PoolUnready,
            QueueFull.
        """
        run_row = self.store.get_run(run_id)
        if run_row is None or run_row.tenant != tenant:
            raise NotFound(f"no run {run_id}", data={"run_id": run_id})
        step_type = _STEP_TYPES[type(body)]
        input_value = msgspec.to_builtins(body.input)
        input_hash = b3({"type": step_type, "input": input_value})
        existing = self.store.get_step_by_token(run_id, body.client_token)
        if existing is not None:
            if existing.input_hash != b3_as_recorded({"type": step_type, "input": input_value},
                                                     input_hash, existing.input_hash):
                raise Conflict(
                    f"client_token {body.client_token!r} was used with another input",
                    data={"client_token": body.client_token, "step_id": existing.step_id,
                          "recorded_hash": existing.input_hash,
                          "submitted_hash": input_hash})
            return views.step(existing), False
        if run_row.status != RunStatus.ACTIVE.value:
            raise Conflict(f"run {run_id} is {run_row.status}; it accepts no steps",
                           data={"run_id": run_id, "status": run_row.status})
        stored_input = _redacted_input(run_row, input_value)
        if self.log.active() >= self.config.max_active_steps:
            raise AdmissionReject(
                f"the server already has {self.config.max_active_steps} active steps",
                retry_after_ms=1000, data={"max_active_steps": self.config.max_active_steps})
        run = self.get_run(run_id, tenant)
        mode = RunMode(run_row.mode)
        match body:
            case LlmCallSubmit():
                check_allowed(run.policy, step_type=step_type, model=body.input.model)
            case LlmPlanSubmit():
                check_allowed(run.policy, step_type=step_type, model=body.input.model)
                for tool in tool_menu(self.get_flow(run.flow_id, None).tools,
                                      body.input.tools):
                    check_allowed(run.policy, step_type=step_type, tool=tool.name)
            case ToolCallSubmit():
                check_allowed(run.policy, step_type=step_type, tool=body.input.tool)
            case FsOpSubmit():
                check_allowed(run.policy, step_type=step_type, fs_op=body.input.op)
            case GateEvalSubmit() | CheckpointSubmit():
                check_allowed(run.policy, step_type=step_type)
        inherited = (self.checkpoints.inherited_step(run, body.client_token)
                     if mode is RunMode.RECORD else None)
        if inherited is not None:  # a fork serves the parent's history up to its checkpoint
            check_recorded_match(client_token=body.client_token, recorded=inherited,
                                 step_type=step_type, input_hash=input_hash,
                                 input_value=input_value)
            return self._submit_replay(run, body, step_type, stored_input, input_hash,
                                       inherited), True
        # Side effects never run again in any replay mode: their recorded results are served.
        if mode is RunMode.REPLAY or (mode is RunMode.STRICT_REPLAY
                                      and step_type in EFFECT_STEP_TYPES):
            return self._submit_replay(run, body, step_type, stored_input, input_hash), True
        match body:
            case ToolCallSubmit():
                return self.effects.submit_tool(run, body, input_value, input_hash), True
            case FsOpSubmit():
                return self.effects.submit_fs(run, body, input_value, input_hash), True
            case GateEvalSubmit():
                recorded = None
                if mode is RunMode.STRICT_REPLAY:
                    recorded = self._recorded(run, body, step_type, input_value, input_hash)
                    if recorded.status != StepStatus.SUCCEEDED.value:
                        return self._submit_replay(run, body, step_type, stored_input,
                                                   input_hash), True
                return self.facts.submit_gate(run, body, input_value, input_hash,
                                              recorded), True
            case CheckpointSubmit():
                if mode is RunMode.STRICT_REPLAY:
                    return self._submit_replay(run, body, step_type, stored_input,
                                               input_hash), True
                return self.checkpoints.submit_step(run, body, input_value, input_hash), True
        return self._submit_llm(run, body, mode, step_type, input_value, input_hash,
                                stored_input), True

    def insert_step(self, run: Run, body: StepSubmit, step_type: str, input_value: Any,
                     input_hash: str, seed: int | None, replay_of_step: str | None,
                     step_id: str | None = None) -> str:
        step_id = step_id or new_id("stp")
        created = self.store.insert_step(StepRow(
            step_id=step_id, run_id=run.run_id, type=step_type,
            client_token=body.client_token,
            input=canonical_json(input_value).decode(), input_hash=input_hash,
            placement=(_enc.encode(body.placement).decode()
                       if isinstance(body, LlmCallSubmit) and body.placement else None),
            status=StepStatus.QUEUED.value, seed=seed,
            created_at=iso_utc(self.clock.now()), last_seq=-1,
            replay_of_step=replay_of_step,
        ))
        if not created:  # a concurrent submit with the same token won the race
            raise Conflict("client_token was claimed concurrently; retry to read the step",
                           data={"client_token": body.client_token})
        self.log.open(step_id, run.run_id)
        return step_id

    def _recorded(self, run: Run, body: StepSubmit, step_type: str, input_value: Any,
                  input_hash: str, *, check_input: bool = True) -> StepRow:
        assert run.replay_of is not None
        rec = self.store.get_step_by_token(run.replay_of, body.client_token)
        check_recorded_match(client_token=body.client_token, recorded=rec,
                             step_type=step_type,
                             input_hash=input_hash if check_input or rec is None
                             else rec.input_hash,
                             input_value=input_value)
        assert rec is not None
        if not StepStatus(rec.status).terminal:
            raise Conflict("the recorded step has not finished yet",
                           data={"recorded_step_id": rec.step_id})
        return rec

    def _submit_replay(self, run: Run, body: StepSubmit, step_type: str, input_value: Any,
                       input_hash: str, rec: StepRow | None = None) -> Step:
        if rec is None:
            rec = self._recorded(run, body, step_type, input_value, input_hash)
        elif not StepStatus(rec.status).terminal:
            raise Conflict("the inherited step has not finished yet",
                           data={"recorded_step_id": rec.step_id})
        rows = self.log.read_rows(rec.step_id)
        step_id = self.insert_step(run, body, step_type, input_value, input_hash,
                                    rec.seed, rec.step_id)
        final = {"status": rec.status, "tokens_in": rec.tokens_in, "tokens_out": rec.tokens_out,
                 "cost_usd": rec.cost_usd, "wall_ms": rec.wall_ms,
                 "provenance": rec.provenance, "error": rec.error}
        self._spawn(self.executor.run_replay, ReplayJob(step_id, run.run_id, rows, final))
        return self.get_step(step_id, None)

    def _output_shape(self, run: Run, body: LlmCallSubmit | LlmPlanSubmit) -> \
            tuple[OutputShape, dict[str, Any] | None, str | None]:
        """``(shape, strict json_schema, menu system text)`` of an LLM Step; for a plan
        the schema is the strict intents envelope (NERVE-4010, NERVE-4013)."""
        if isinstance(body, LlmPlanSubmit):
            inp = body.input
            menu = tool_menu(self.get_flow(run.flow_id, None).tools, inp.tools)
            text = menu_text(menu, inp.max_intents) if inp.menu == "system" else None
            return (PlanShape(menu, inp.max_intents),
                    intents_schema(menu, inp.max_intents), text)
        contract = body.input.response_contract
        if contract is None:
            return OutputShape(), None, None
        check_contract_schema(contract)
        return ContractShape(contract), contract, None

    def _submit_llm(self, run: Run, body: LlmCallSubmit | LlmPlanSubmit, mode: RunMode,
                    step_type: str, input_value: Any, input_hash: str,
                    stored_input: Any) -> Step:
        inp = body.input
        if (inp.messages is None) == (inp.prompt is None):
            raise InvalidParams(f"{step_type} input needs exactly one of messages or prompt")
        shape, json_schema, menu = self._output_shape(run, body)
        prm = inp.params
        if prm.max_tokens < 1 or prm.temperature < 0 or prm.top_k < 0 or not (
                0 < prm.top_p <= 1) or not (0 <= prm.min_p <= 1) or prm.repeat_penalty <= 0:
            raise InvalidParams("sampling params out of range",
                                data={"params": msgspec.to_builtins(prm)})
        seed = prm.seed if prm.seed is not None else derive_seed(run.seed, body.client_token)
        placement = body.placement or run.pool_policy.placement
        recorded: StepRow | None = None
        rec_prov: Provenance | None = None
        if mode is RunMode.STRICT_REPLAY:
            # Determinism inputs are compared first, so a changed seed or params is named
            # as such (DETERMINISM_INPUTS_DIFFER); any other input change is NONDETERMINISM.
            recorded = self._recorded(run, body, step_type, input_value, input_hash,
                                      check_input=False)
            if recorded.provenance is None:  # the recording failed: serve it as is
                return self._submit_replay(run, body, step_type, stored_input, input_hash)
            rec_prov = _prov_decoder.decode(recorded.provenance)
            found = self.pools.find_replica(rec_prov.replica_id)
            placement = PlacementPin(pool_id=found[0].pool_id if found else rec_prov.pool_id,
                                     replica_id=rec_prov.replica_id)
        pool, replica, decision = place(self.pools, inp.model, placement)
        engine = replica.engine()
        engine.check_seed(seed)
        messages = ([msgspec.to_builtins(m) for m in inp.messages]
                    if inp.messages is not None else None)
        prompt = inp.prompt
        if messages is not None:
            texts, redactions = redact(run.policy, [m["content"] for m in messages])
            messages = [{**m, "content": t} for m, t in zip(messages, texts, strict=True)]
        elif prompt is not None:
            (prompt,), redactions = redact(run.policy, [prompt])
        else:  # unreachable: exactly one of messages/prompt was checked above
            raise InvalidParams("llm_call input needs exactly one of messages or prompt")
        if menu is not None:  # the server-authored tool menu, shown as a system message
            if messages is not None:
                messages = [{"role": "system", "content": menu}, *messages]
            else:
                prompt = f"{menu}\n\n{prompt}"
        if json_schema is not None:
            try:
                engine.check_constraint(json_schema)
            except InvalidParams:
                if not isinstance(shape, PlanShape):
                    raise
                # A tool schema the grammar cannot express: constrain the envelope only;
                # every suggestion's arguments are still validated (NERVE-4011).
                json_schema = intents_schema(shape.tools, shape.max_intents, strict=False)
                engine.check_constraint(json_schema)
        prepared = engine.prepare(prompt=prompt, messages=messages)
        model_cfg = pool.models[inp.model]
        if prepared.tokens_in + prm.max_tokens > model_cfg.context_tokens:
            raise ContextBudget(
                f"prompt ({prepared.tokens_in} tokens) + max_tokens ({prm.max_tokens}) "
                f"exceeds the context of {model_cfg.context_tokens} tokens",
                data={"tokens_in": prepared.tokens_in, "max_tokens": prm.max_tokens,
                      "context_tokens": model_cfg.context_tokens})
        prompt_hash = b3({"messages": messages} if messages is not None
                         else {"prompt": prompt})
        params = {k: v for k, v in msgspec.to_builtins(prm).items() if k != "seed"}
        if json_schema is not None:  # constrained decoding is a determinism input
            params["json_schema"] = json_schema
        params_hash = b3(params)
        verifier = None
        tokens: list[bytes] = []
        if rec_prov is not None and recorded is not None:
            ident = pool.identity
            rec_settings = self.store.engine_build(rec_prov.engine_build)
            # a recording made before RFC 8785 keeps its hashes (NERVE-4048)
            prompt_hash = b3_as_recorded({"messages": messages} if messages is not None
                                         else {"prompt": prompt}, prompt_hash,
                                         rec_prov.prompt_hash)
            params_hash = b3_as_recorded(params, params_hash, rec_prov.params_hash)
            check_determinism_inputs(rec_prov, {
                "prompt_hash": prompt_hash, "params_hash": params_hash, "seed": seed,
                "engine": ident.name, "engine_version": ident.version,
                "engine_build": same_build(rec_prov, rec_settings, engine=ident.name,
                                           version=ident.version,
                                           fingerprint=ident.build_fingerprint,
                                           settings=ident.settings),
                "model_hash": ident.model_hash,
                "replica_id": replica.replica_id, "policy_hash": run.policy_hash,
            }, details={
                "params_hash": {"key": "params", "current": params,
                                "recorded": recorded_params(
                                    recorded.type, recorded.input,
                                    msgspec.to_builtins(body.input), params)},
                "engine_build": {"key": "settings", "current": ident.settings,
                                 "recorded": msgspec.json.decode(rec_settings)
                                 if rec_settings is not None else None},
            })
            check_recorded_match(client_token=body.client_token, recorded=recorded,
                                 step_type=step_type, input_hash=input_hash,
                                 input_value=input_value)
            tokens = [d for _s, t, d in self.log.read_rows(recorded.step_id) if t == "token"]
        if pool.queued() >= pool.config.queue_capacity:
            retry_ms = int(replica.avg_step_ms)
            raise QueueFull(f"pool {pool.pool_id} queue is full "
                            f"({pool.config.queue_capacity} waiting)",
                            retry_after_ms=retry_ms, data={"pool_id": pool.pool_id})
        step_id = new_id("stp")
        now = self.clock.now()
        res = self.budgets.admit(run, step_id, body.budgets, model=inp.model,
                                 tokens_in=prepared.tokens_in, max_tokens=prm.max_tokens,
                                 now_s=now)
        try:
            self.insert_step(run, body, step_type, stored_input, input_hash, seed,
                              recorded.step_id if recorded else None, step_id)
        except BaseException:
            self.budgets.release(run.run_id, step_id)
            raise
        if rec_prov is not None:
            verifier = TokenVerifier(tokens, run_id=run.run_id, step_id=step_id)
        mono = self.clock.monotonic()
        deadline = mono + (res.deadline_s - now)
        if body.budgets.max_wall_ms is not None:
            deadline = min(deadline, mono + body.budgets.max_wall_ms / 1000.0)
        req = CompletionRequest(
            prompt=prepared.text, seed=seed, temperature=prm.temperature, top_k=prm.top_k,
            top_p=prm.top_p, min_p=prm.min_p, repeat_penalty=prm.repeat_penalty,
            max_tokens=min(prm.max_tokens, res.tokens_out), stop=tuple(prm.stop),
            json_schema=json_schema)
        job = LlmJob(step_id=step_id, run_id=run.run_id, mode=mode.value, pool=pool,
                     replica=replica, decision=decision, request=req, model=inp.model,
                     tokens_in=prepared.tokens_in, prompt_hash=prompt_hash,
                     params_hash=params_hash, policy_hash=run.policy_hash,
                     submitted_at=mono, reservation=res, deadline=deadline,
                     verifier=verifier, redactions=redactions, step_type=step_type,
                     shape=shape)
        self._spawn(self.executor.run_llm, job)
        return self.get_step(step_id, None)

    def spawn(self, fn: Any, job: Any) -> None:
        """Run ``fn(job)`` as a Step task in the orchestrator's task group."""
        self._spawn(fn, job)

    def _spawn(self, fn: Any, job: Any) -> None:
        if self._tg is None:
            raise RuntimeError("the orchestrator is not running")
        self._tg.start_soon(fn, job)

    def budget_remaining(self, run_id: str) -> dict[str, float]:
        """What is left of a Run's budgets, for the budgets it has (POLICY-3000).

        Returns:
            ``{"tokens_in": tokens, "tokens_out": tokens, "cost_usd": USD, "wall_ms": ms}``
            with only the capped budgets present, each at least 0; ``{}`` for no Run.
            The HTTP layer turns these into ``X-Budget-*-Remaining`` headers.
        """
        if self.store.get_run(run_id) is None:
            return {}
        left = self.budgets.remaining(self.get_run(run_id, None))
        out = {k: max(0.0, float(left[k])) for k in ("tokens_in", "tokens_out", "cost_usd")
               if math.isfinite(left[k])}
        if math.isfinite(left["deadline_s"]):
            out["wall_ms"] = max(0.0, (left["deadline_s"] - self.clock.now()) * 1000)
        return out

    def get_step(self, step_id: str, tenant: str | None = DEFAULT_TENANT) -> Step:
        """The Step resource. Raises NotFound (also for another tenant's step)."""
        row = self.store.get_step(step_id)
        if row is not None and tenant is not None:
            run = self.store.get_run(row.run_id)
            if run is None or run.tenant != tenant:
                row = None
        if row is None:
            raise NotFound(f"no step {step_id}", data={"step_id": step_id})
        return views.step(row)

    def cancel_step(self, step_id: str, tenant: str = DEFAULT_TENANT) -> Step:
        """Cancel a Step; idempotent, and a no-op on a finished Step (STREAM-2002)."""
        self.get_step(step_id, tenant)
        self.executor.cancel(step_id)
        return self.get_step(step_id, tenant)

    # -- streams -----------------------------------------------------------------------

    def open_stream(self, step_id: str, last_event_id: int | None,
                    heartbeat_s: float | None = None,
                    tenant: str = DEFAULT_TENANT) -> StepStream:
        """Validate, then return the SSE stream of a Step (a cursor over its log).

        The HTTP layer drives :meth:`StepStream.pump`: each write batches every frame
        ready at that moment; ``last_event_id`` resumes right after that frame; idle
        streams get ``: keep-alive`` comments every ``heartbeat_s`` (STREAM-2000,
        STREAM-2004).

        Raises:
            NotFound: no such Step (before the stream starts).
        """
        self.get_step(step_id, tenant)
        hb = heartbeat_s if heartbeat_s is not None else self.config.heartbeat_ms / 1000.0
        return StepStream(self.log, step_id, -1 if last_event_id is None else last_event_id,
                          hb, self._reader_left)

    def _reader_left(self, step_id: str) -> None:
        """A reader went away before the terminal frame: when it was the last one and the
        Run (or the server) asks for it, cancel the Step after the reconnect grace."""
        run_id = self.log.run_of(step_id)
        if run_id is None or not self.log.is_live(step_id) or self.log.subscribers(step_id):
            return
        run = self.store.get_run(run_id)
        flag = msgspec.json.decode(run.body).get("cancel_on_disconnect") if run else None
        if not (self.config.cancel_on_disconnect if flag is None else flag):
            return
        if self._tg is not None:
            self._departures[step_id] = departure = object()
            self._tg.start_soon(self._cancel_after_grace, step_id, departure)

    async def _cancel_after_grace(self, step_id: str, departure: object) -> None:
        await self.clock.sleep(self.config.disconnect_grace_ms / 1000.0)
        if self._departures.get(step_id) is not departure:
            return  # a reader came back and left again: its own grace runs
        del self._departures[step_id]
        if self.log.is_live(step_id) and not self.log.subscribers(step_id):
            self.executor.cancel(step_id, reason="every reader disconnected")

    # -- pools -------------------------------------------------------------------------

    def list_pools(self) -> list[PoolInfo]:
        """Every pool with engine, models, replicas and load (PLACE-5000)."""
        return [p.info() for p in self.pools.pools.values()]

    def get_pool(self, pool_id: str) -> PoolInfo:
        """One pool. Raises NotFound."""
        pool = self.pools.pools.get(pool_id)
        if pool is None:
            raise NotFound(f"no pool {pool_id}", data={"pool_id": pool_id})
        return pool.info()

    def capabilities(self, tenant: str = DEFAULT_TENANT) -> Capabilities:
        """Opaque model ids, context sizes, features and limits; ``sandbox_parents`` are
        the caller's own sandbox directories only (POLICY-3010)."""
        models: dict[str, ModelCapability] = {}
        for pool in self.pools.pools.values():
            for m in pool.config.models:
                cap = models.setdefault(m.id, ModelCapability(
                    id=m.id, family=m.family, context_tokens=m.context_tokens,
                    features=["completion", "chat", "stream", "seed", "strict_replay"],
                    pools=[]))
                cap.pools.append(pool.pool_id)
                if pool.constrained_decoding() and "json_schema" not in cap.features:
                    cap.features += ["json_schema", "llm_plan"]
        return Capabilities(models=list(models.values()), server_version=SERVER_VERSION,
                            sandbox_parents=self.effects.sandbox_dirs(tenant),
                            limits={"max_body_bytes": self.config.max_body_bytes,
                                    "max_recorded_value_bytes":
                                        self.config.max_recorded_value_bytes,
                                    "max_queue_per_pool": max(
                                        (p.queue_capacity for p in self.config.pools),
                                        default=0)})
