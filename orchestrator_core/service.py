"""The orchestrator: Flows, Runs, Steps and their streams, with no HTTP in sight.

:meth:`Orchestrator.running` is the lifecycle: it opens the store, recovers Steps a
crash left unfinished (each gets an ``INTERRUPTED`` error frame recording what it
consumed), provisions the pools, and runs the group-commit flusher, the pool watcher and
every Step task in one task group. Leaving the context stops the engines and closes the
store.

Steps of every type are admitted by :mod:`orchestrator_core.steps.admission` and run by
:mod:`orchestrator_core.steps.runner`; each type is one module of
:mod:`orchestrator_core.steps` that sees a narrow context, never this class.
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

from contracts.errors import DeterminismInputsDiffer, InvalidParams, NotFound
from contracts.flows import Flow, FlowCreate
from contracts.pools import Capabilities, PoolInfo
from contracts.runs import Budgets, Run, RunCreate, RunMode, RunStatus
from contracts.steps import Step, StepSubmit
from orchestrator_core import cluster, lookup, store_open, views
from orchestrator_core.budgets import BudgetBook
from orchestrator_core.canonical import (
    b3,
    b3_as_recorded,
    canonical_json,
    flow_address,
    new_id,
)
from orchestrator_core.capabilities import build_capabilities
from orchestrator_core.checkpoints import Checkpoints
from orchestrator_core.clock import Clock, SystemClock, iso_utc
from orchestrator_core.config import ServerConfig
from orchestrator_core.eventlog import EventLog
from orchestrator_core.facts import Facts, check_fact_schemas
from orchestrator_core.fs_sandboxes import Sandboxes
from orchestrator_core.metrics import Metrics
from orchestrator_core.metrics_pools import PoolCollector
from orchestrator_core.policy import validate_policy
from orchestrator_core.pools import PoolManager
from orchestrator_core.rows import FlowRow, RunRow
from orchestrator_core.run_life import RunLife
from orchestrator_core.steps.admission import Admitter
from orchestrator_core.steps.base import StepContext
from orchestrator_core.steps.registry import StepKinds
from orchestrator_core.steps.runner import StepTasks
from orchestrator_core.steps.tool_call import check_tool_schemas
from orchestrator_core.store_base import Store
from orchestrator_core.streams import StepStream
from worker_adapters.base import Drivers, ToolExecutors, ToolsFactory

__all__ = ["DEFAULT_TENANT", "SERVER_VERSION", "Orchestrator"]

SERVER_VERSION = "orchestratord 0.1.0"
DEFAULT_TENANT = "default"
"""The tenant of every request when the server has no bearer tokens configured."""
_enc = msgspec.json.Encoder()


class _RunBudgets(msgspec.Struct):
    """The budgets in a stored Run's body (the rest is not decoded)."""

    budgets: Budgets = Budgets()


_budgets_of = msgspec.json.Decoder(_RunBudgets)
_NO_BUDGETS = Budgets()
_UNCAPPED_KEPT = 4096
"""Run ids remembered as having no budget caps (a Run's budgets never change)."""


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
        self.budgets = BudgetBook(config.prices, cluster.ledger_of(store))  # PG-9106
        self.tools = tools
        self.sandboxes = Sandboxes(config)
        self.facts = Facts(store, self.log, clock, config)
        self.checkpoints = Checkpoints(store, clock, config)
        self.steps = StepContext(config=config, store=store, log=self.log, pools=pools,
                                 budgets=self.budgets, clock=clock, metrics=metrics,
                                 tools=tools, facts=self.facts,
                                 checkpoints=self.checkpoints, sandboxes=self.sandboxes)
        self.kinds = StepKinds(self.steps)
        self.tasks = StepTasks(self.steps)
        self.log.on_fenced = self.tasks.fence  # PG-9108
        self.admitter = Admitter(self.steps, self.kinds, self.tasks)
        self.runs = RunLife(store, self.log, self.tasks, clock)  # NERVE-4100..NERVE-4104
        self._departures: dict[str, object] = {}  # step id -> its last reader's departure
        self._uncapped: dict[str, None] = {}  # Runs with no budgets, oldest first

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
            store: the store (default: the one ``config.store`` names, opened and
                migrated by :func:`orchestrator_core.store_open.open_store`: the SQLite
                file ``<data_dir>/orchestrator.db`` or a PostgreSQL database, PG-9052);
                it is closed on exit either way (PLACE-5008).
        """
        data_dir = pathlib.Path(config.data_dir)
        if store is None:
            store = store_open.open_store(config)
        clock = clock or SystemClock()
        pools = PoolManager(config, data_dir, drivers, clock)
        pools.slot_gate = cluster.slot_gate_of(store)  # PG-9107
        executors = tools(config.tools)
        orch = cls(config, store, pools, clock, metrics or Metrics(), executors)
        collector = PoolCollector(pools)
        try:
            orch.recover()
            await pools.start()
            orch.metrics.registry.register(collector)
            for pool in pools.pools.values():
                ident = pool.identity
                store.record_engine_build(ident.build_fingerprint,
                                          canonical_json(ident.settings).decode())
            async with anyio.create_task_group() as tg:
                orch.tasks.tg = tg
                tg.start_soon(orch.log.run_flusher)
                tg.start_soon(pools.watch)
                tg.start_soon(cluster.keep_lease, store, config, clock,
                              lambda: orch.tasks.recover(False),
                              orch.log.notify_remote, orch.log.wake_remote,
                              orch.tasks.cancel_local,  # PG-9101..9103, PG-9111
                              lambda: orch.log.fence_disowned(
                                  lambda ids: cluster.disowned(store, ids)))  # PG-9110
                try:
                    yield orch
                finally:
                    tg.cancel_scope.cancel()
        finally:
            orch.tasks.tg = None
            with contextlib.suppress(KeyError):  # not registered when the start failed
                orch.metrics.registry.unregister(collector)
            await pools.stop()
            await executors.aclose()
            orch.log.flush()
            cluster.leave(store)
            store.close()

    # -- recovery ----------------------------------------------------------------------

    def recover(self) -> int:
        """Close every Step a crash left ``queued``/``running`` with an ``INTERRUPTED``
        error frame that records what it consumed (NERVE-4040), and remove the FS
        broker's leftover temporary files from every sandbox (POLICY-3012).

        Returns:
            How many Steps were interrupted.
        """
        self.sandboxes.sweep_temp_files()
        return self.tasks.recover()

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
        return lookup.get_flow(self.store, flow_id, tenant)

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
            InvalidParams: ``replay_of`` missing/forbidden, the recording is not a
                ``record`` run of this flow, or ``cache`` is on in a replay mode
                (``data.field`` ``cache``, REC-7100).
            FsPolicyViolation: a sandbox root outside the tenant's own directories.
            DeterminismInputsDiffer: a replay asks for another seed or policy.
        """
        flow = self.get_flow(flow_id, tenant)
        seed = body.seed
        validate_policy(body.policy)
        if body.fs_policy.roots:
            self.sandboxes.validate_fs_policy(body.fs_policy, tenant)
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
        elif body.cache != "off":  # a replay serves its recording (REC-7100)
            raise InvalidParams("cache is only for record runs; a replay serves its "
                                "recording", data={"field": "cache", "mode": body.mode.value})
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
        created = (self.sandboxes.create_roots(body.fs_policy, tenant)
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
                                  # kept only when on: a cache-off body keeps its bytes
                                  **({"cache": body.cache} if body.cache != "off" else {}),
                                  }).decode(),
                policy_hash=policy_hash, status=RunStatus.ACTIVE.value,
                created_at=iso_utc(self.clock.now()), tenant=tenant,
            ))
        except BaseException:
            self.sandboxes.discard_roots(created)
            raise
        if fork is not None:
            self.checkpoints.inherit(run_id, fork)
        return self.get_run(run_id, tenant)

    def get_run(self, run_id: str, tenant: str | None = DEFAULT_TENANT) -> Run:
        """The Run with its usage and Step counts, and its summary once it is closed with
        no live Step (NERVE-4104). Raises NotFound (also for another tenant's run).
        ``tenant=None`` is the server's own, unscoped view."""
        return self.runs.finalize(run_id, tenant)

    def cancel_run(self, run_id: str, tenant: str = DEFAULT_TENANT) -> Run:
        """Close the Run ``cancelled``: refuse new Steps and cancel its live ones;
        idempotent. A Run closed ``completed`` or ``failed`` is 409 ``CONFLICT``
        (NERVE-4103)."""
        return self.runs.close(run_id, RunStatus.CANCELLED.value, tenant)

    # -- steps -------------------------------------------------------------------------

    async def submit_step(self, run_id: str, body: StepSubmit,
                          tenant: str = DEFAULT_TENANT) -> tuple[Step, bool]:
        """Accept a Step of any type, idempotently by ``client_token`` (NERVE-4003).

        Everything that can refuse the Step is checked before anything is stored: policy,
        the type's own checks (model, context, placement, queue capacity, budgets,
        tool arguments, ...) and, for replays, the recording
        (:mod:`orchestrator_core.steps.admission`). An LLM Step's prompt is counted on
        its engine, the one await of admission.

        Returns:
            ``(step, created)``; ``created`` is False for a repeated client_token.

        Raises:
            NotFound, Conflict (token reused with another input, or the run is
            cancelled), AdmissionReject, InvalidParams, InvalidToolArgs, InvalidModel,
            ContextBudget, PolicyDenied, FsPolicyViolation, Nondeterminism,
            DeterminismInputsDiffer, BudgetExceeded, PoolUnavailable, PoolUnready,
            CircuitOpen, QueueFull, EngineError.
        """
        return await self.admitter.submit(run_id, body, tenant)

    def budget_remaining(self, run_id: str) -> dict[str, float]:
        """What is left of a Run's budgets, for the budgets it has (POLICY-3000).

        Returns:
            ``{"tokens_in": tokens, "tokens_out": tokens, "cost_usd": USD, "wall_ms": ms}``
            with only the capped budgets present, each at least 0; ``{}`` for no Run.
            The HTTP layer turns these into ``X-Budget-*-Remaining`` headers. A Run
            without budgets is remembered (the last 4,096), so its later answers read
            nothing (STREAM-2015).
        """
        if run_id in self._uncapped:
            return {}  # known to have no cap (a Run's budgets are fixed at its creation)
        row = self.store.get_run(run_id)
        if row is None:
            return {}
        if _budgets_of.decode(row.body).budgets == _NO_BUDGETS:
            if len(self._uncapped) >= _UNCAPPED_KEPT:
                del self._uncapped[next(iter(self._uncapped))]
            self._uncapped[run_id] = None
            return {}  # no cap, nothing to report: the Run's usage is not read
        left = self.budgets.remaining(self.get_run(run_id, None))
        out = {k: max(0.0, float(left[k])) for k in ("tokens_in", "tokens_out", "cost_usd")
               if math.isfinite(left[k])}
        if math.isfinite(left["deadline_s"]):
            out["wall_ms"] = max(0.0, (left["deadline_s"] - self.clock.now()) * 1000)
        return out

    def get_step(self, step_id: str, tenant: str | None = DEFAULT_TENANT) -> Step:
        """The Step resource. Raises NotFound (also for another tenant's step)."""
        return lookup.get_step(self.store, step_id, tenant)

    def cancel_step(self, step_id: str, tenant: str = DEFAULT_TENANT) -> Step:
        """Cancel a Step; idempotent, and a no-op on a finished Step (STREAM-2002)."""
        self.get_step(step_id, tenant)
        self.tasks.cancel(step_id)
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
        return self.stream_of(step_id, last_event_id, heartbeat_s)

    def stream_of(self, step_id: str, last_event_id: int | None = None,
                  heartbeat_s: float | None = None) -> StepStream:
        """The SSE stream of a Step the caller already holds, with no lookup: the Step
        :meth:`submit_step` just returned to the same tenant (STREAM-2010). Anything else
        goes through :meth:`open_stream`, which checks the Step and its tenant.

        Args:
            step_id: a Step that exists (its tenant already checked by the caller).
            last_event_id: resume after this sequence number; None: from the start.
            heartbeat_s: idle time before a ``: keep-alive`` comment (s); default
                ``heartbeat_ms`` of the config.

        Returns:
            The stream, not started: the HTTP layer drives :meth:`StepStream.pump`.
        """
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
        if self.tasks.tg is not None:
            self._departures[step_id] = departure = object()
            self.tasks.tg.start_soon(self._cancel_after_grace, step_id, departure)

    async def _cancel_after_grace(self, step_id: str, departure: object) -> None:
        await self.clock.sleep(self.config.disconnect_grace_ms / 1000.0)
        if self._departures.get(step_id) is not departure:
            return  # a reader came back and left again: its own grace runs
        del self._departures[step_id]
        if self.log.is_live(step_id) and not self.log.subscribers(step_id):
            self.tasks.cancel(step_id, reason="every reader disconnected")

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
        """Opaque model ids, context sizes and features; every Step and frame type; the
        tool executors; prices per model; every limit (NERVE-4076). ``sandbox_parents``
        are the caller's own sandbox directories only (POLICY-3010)."""
        return build_capabilities(self.config, self.pools, self.tools, SERVER_VERSION,
                                  self.sandboxes.sandbox_dirs(tenant))
